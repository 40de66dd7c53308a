"""``BlockingTokenManager``: the token manager for synchronous code and threads.

One :class:`AsyncTokenManager` lives on a private event loop in a daemon thread; every
blocking call is submitted to that loop, so single flight holds across threads. A fresh
cached access token is read directly, without crossing threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from asyncio import _get_running_loop
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import EventLoopError, ManagerClosedError, TokenEndpointError
from ._http import ClientSecrets
from ._logging import logger
from ._lwa import DEFAULT_SCOPE
from ._manager import AsyncTokenManager
from ._models import AccountStatus, Token

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._httpx import SyncHttpxAuth
    from ._requests import RequestsAuth
    from ._sources import BlockingAccountTokenSource
    from .stores import TokenStore

__all__ = ["BlockingTokenManager"]

_T = TypeVar("_T")

#: At interpreter exit (or when an unclosed manager is collected), how long to wait for
#: the loop thread to finish closing before leaving it to die with the process.
EXIT_JOIN_TIMEOUT = 5.0

_THREAD_NAME = "aioamztoken-blocking"


class _LoopThread:
    """A private event loop in a daemon thread that hosts one AsyncTokenManager.

    Its whole life runs inside ``asyncio.run`` on that thread: the manager is created
    there (so its session and locks belong to that loop), served until :meth:`stop`, then
    closed, and every leftover task is cancelled before the loop closes.

    It never refers to the :class:`BlockingTokenManager` that owns it, so that one can
    be garbage collected (and this closed by its finalizer) while the thread runs.
    """

    def __init__(self, factory: Callable[[], AsyncTokenManager]) -> None:
        self._factory: Callable[[], AsyncTokenManager] | None = factory
        self._lock = threading.Lock()
        self._closed = False  # no new call is accepted once set (under _lock)
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.manager: AsyncTokenManager | None = None
        self.thread = threading.Thread(target=self._run, name=_THREAD_NAME, daemon=True)

    def start(self) -> AsyncTokenManager:
        """Start the thread and return its manager; re-raise here what creating it raised."""
        self.thread.start()
        self._ready.wait()
        if self.manager is None:
            self.thread.join()
            error, self._error = self._error, None
            assert error is not None
            raise error
        return self.manager

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the thread that calls start() or stop()
            self._error = exc
        finally:
            with self._lock:
                self._closed = True
                pending, self._pending = self._pending, set()
            # Normally empty (asyncio.run cancelled every call); should the loop have died
            # some other way, no caller is left waiting for ever.
            for future in pending:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(_closed_error())
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        factory, self._factory = self._factory, None
        assert factory is not None
        try:
            async with factory() as manager:
                self.manager = manager
                self._ready.set()
                await self._stop.wait()
            # The store's connections (Redis) belong to this loop: close them here, while
            # it runs; nobody else can once it is gone.
            closer = getattr(manager.store, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            with self._lock:
                self._closed = True

    def submit(
        self, call: Callable[[AsyncTokenManager], Coroutine[Any, Any, _T]]
    ) -> concurrent.futures.Future[_T]:
        """Schedule ``call(manager)`` on the loop. Raises :class:`ManagerClosedError`."""
        if not self.thread.is_alive():  # closed, or this is a child process after fork()
            raise _closed_error()
        with self._lock:
            if self._closed:
                raise _closed_error()
            assert self.loop is not None
            assert self.manager is not None
            coro = call(self.manager)
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            except RuntimeError:  # the loop closed under us
                coro.close()
                raise _closed_error() from None
            self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def stop(self, *, timeout: float | None = None, reraise: bool = True) -> None:
        """Close the manager, stop the loop and join the thread. Idempotent.

        Calls in flight end with :class:`ManagerClosedError`. From the loop's own thread
        (a hook) the stop is only requested: a thread cannot join itself.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
        loop, stop = self.loop, self._stop
        if first and loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stop.set)
        if threading.current_thread() is self.thread:
            return
        self.thread.join(timeout)
        error, self._error = self._error, None
        if error is None:
            return
        if reraise:
            raise error
        logger.error("the BlockingTokenManager thread ended with %s", type(error).__name__)

    def stop_at_exit(self) -> None:
        self.stop(timeout=EXIT_JOIN_TIMEOUT, reraise=False)


def _closed_error() -> ManagerClosedError:
    return ManagerClosedError("this BlockingTokenManager is closed; create a new one")


class BlockingTokenManager:
    """Keeps Login with Amazon access tokens valid, for synchronous code and threads.

    Which class where: in ``async`` code (one event loop) use :class:`AsyncTokenManager`;
    in synchronous code (scripts, schedulers, thread pools, WSGI apps, notebooks with
    ``allow_running_loop=True``) use this one::

        with BlockingTokenManager(client_id, client_secret, store=store) as mgr:
            headers = {"Authorization": "Bearer " + mgr.get_access_token(account_id)}

    Concurrency: safe to call from any number of threads at once. One
    :class:`AsyncTokenManager` runs on a private event loop in a daemon thread, and every
    call is submitted to it, so its guarantees hold across threads: concurrent callers
    for one account share one token request (64 threads on a cold cache make one), and
    accounts refresh in parallel. Create one per process (not before ``fork()``).

    Cost: :meth:`get_access_token` returns a fresh cached token without crossing threads
    (a dict read, a clock read and a check for a running event loop); so does
    :meth:`get_token` once it has handed out that token. Any other call waits for the
    loop thread, a few tens of microseconds plus whatever I/O it needs.

    Errors are those of :class:`AsyncTokenManager` (:class:`AccountNotFoundError`,
    :class:`InvalidGrantError`, :class:`TokenEndpointError`...); no ``asyncio`` or
    ``concurrent.futures`` exception escapes. A call that is still waiting when the
    manager is closed raises :class:`ManagerClosedError`, as does any call after
    :meth:`close`.

    Closing also closes the store when it has an ``aclose()`` (a
    :class:`~aioamztoken.RedisTokenStore`): its connections belong to the private loop,
    which is gone afterwards.

    Event loops: calling it from inside a running event loop raises
    :class:`EventLoopError` (it would block that loop: ``await`` an
    :class:`AsyncTokenManager` instead). The check is made on every call but
    :meth:`close` and :meth:`authorization_url`, the cached path included (a cheap
    ``asyncio._get_running_loop()``), so the outcome never depends on the cache.
    ``allow_running_loop=True`` accepts calls from a foreign loop (a notebook's, say) and
    blocks it meanwhile. A call
    from the manager's own loop (a hook calling back into this object) always raises
    :class:`EventLoopError`, since it would deadlock: a coroutine hook may ``await``
    :attr:`manager` instead.

    ``options`` are those of :class:`AsyncTokenManager` (``min_refresh_interval``,
    default 1.0, ``retry_budget``... among them), except ``session``: an aiohttp
    session belongs to one event loop, so the manager makes its own on its loop. Hooks
    (``on_refresh``...) run on the loop thread. ``call_timeout`` (seconds, default
    ``None``: no limit beyond the manager's own ``retry_budget`` and ``request_timeout``)
    bounds each call that crosses threads; when it runs out :class:`TokenEndpointError`
    is raised, and a shared refresh keeps running for the others.

    Close it with :meth:`close` or a ``with`` block: that closes the manager on its loop,
    stops the loop and joins the thread. If it is never closed, it is closed when it is
    garbage collected or at interpreter exit.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str | Sequence[str],
        *,
        store: TokenStore,
        call_timeout: float | None = None,
        allow_running_loop: bool = False,
        **options: Any,
    ) -> None:
        if "session" in options:
            raise TypeError(
                "BlockingTokenManager does not take a session: an aiohttp session belongs "
                "to one event loop, and the manager makes its own on its private loop"
            )
        if call_timeout is not None and call_timeout <= 0:
            raise ValueError("call_timeout must be positive (or None for no limit)")
        self.call_timeout = call_timeout
        self.allow_running_loop = allow_running_loop

        def factory() -> AsyncTokenManager:
            return AsyncTokenManager(client_id, client_secret, store=store, **options)

        self._runner = _LoopThread(factory)
        self._manager = self._runner.start()
        self._cached = self._manager.cached_access_token
        # The Token last handed out per account: get_token serves it without a hop while
        # the manager still reports its access token as the fresh one.
        self._tokens: dict[str, Token] = {}
        self._finalizer = weakref.finalize(self, self._runner.stop_at_exit)

    def __repr__(self) -> str:
        return f"<BlockingTokenManager {self._manager!r}>"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> BlockingTokenManager:
        if self.closed:
            raise _closed_error()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the manager on its loop, stop the loop and join its thread. Idempotent.

        Calls still waiting raise :class:`ManagerClosedError`; tokens already saved stay
        in the store. May be called from any thread, or from inside an event loop (it
        blocks that loop while the manager closes).
        """
        self._finalizer.detach()
        self._runner.stop()
        self._tokens.clear()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called (or the loop thread has ended)."""
        return self._manager.closed or not self._runner.thread.is_alive()

    @property
    def min_refresh_interval(self) -> float:
        """The manager's ``min_refresh_interval``: the least seconds between a token's
        issue and its next refresh when it lives less (default 1.0)."""
        return self._manager.min_refresh_interval

    @property
    def manager(self) -> AsyncTokenManager:
        """The underlying :class:`AsyncTokenManager`, bound to the private loop.

        Await it only from that loop (in a coroutine hook, say); from any other loop it
        raises :class:`EventLoopError`. Its ``cached_access_token`` may be read anywhere.
        """
        return self._manager

    # ------------------------------------------------------------------ crossing threads

    def _check_caller(self) -> None:
        loop = _get_running_loop()
        if loop is None:
            return
        if loop is self._runner.loop:
            raise EventLoopError(
                "BlockingTokenManager called from its own event loop thread (from a hook?): "
                "that would deadlock; in a coroutine hook, await "
                "blocking_manager.manager.get_access_token(...) instead"
            )
        if not self.allow_running_loop:
            raise EventLoopError(
                "BlockingTokenManager called from inside a running event loop, which it "
                "would block: in async code use AsyncTokenManager and await its methods "
                "(or run this call in a thread: await asyncio.to_thread(...)); "
                "allow_running_loop=True accepts such calls"
            )

    def _call(self, what: str, call: Callable[[AsyncTokenManager], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``call(manager)`` on the loop thread and wait for its outcome."""
        self._check_caller()
        future = self._runner.submit(call)
        try:
            return future.result(self.call_timeout)
        except concurrent.futures.CancelledError:
            # Only close() cancels a call: the manager or its loop was shut down meanwhile.
            raise ManagerClosedError(
                f"BlockingTokenManager.{what} was interrupted: the manager was closed"
            ) from None
        except concurrent.futures.TimeoutError:
            future.cancel()  # this caller's wait only: a shared refresh goes on
            raise TokenEndpointError(
                f"BlockingTokenManager.{what} did not finish within "
                f"call_timeout={self.call_timeout}s",
                attempts=0,
            ) from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: leave no task behind
            raise

    def _remember(self, account_id: str, token: Token) -> Token:
        self._tokens[account_id] = token
        return token

    # ------------------------------------------------------------------ getting tokens

    def get_access_token(self, account_id: str) -> str:
        """A valid access token for ``account_id``, refreshing it first if it has expired.

        A fresh cached token is returned without crossing threads. Raises what
        :meth:`AsyncTokenManager.get_access_token` raises, and :class:`EventLoopError`
        from inside a running event loop.
        """
        if _get_running_loop() is not None:
            self._check_caller()
        token = self._cached(account_id)
        if token is not None:
            return token
        return self._call("get_access_token", lambda m: m.get_access_token(account_id))

    def get_token(self, account_id: str) -> Token:
        """Like :meth:`get_access_token`, returning the whole :class:`Token`."""
        if _get_running_loop() is not None:
            self._check_caller()
        known = self._tokens.get(account_id)
        if known is not None and self._cached(account_id) == known.access_token:
            return known
        token = self._call("get_token", lambda m: m.get_token(account_id))
        return self._remember(account_id, token)

    def refresh(self, account_id: str) -> Token:
        """Refresh now, whatever the token's expiry. Concurrent calls share one request."""
        token = self._call("refresh", lambda m: m.refresh(account_id))
        return self._remember(account_id, token)

    def refresh_if_current(self, account_id: str, rejected_access_token: str) -> Token:
        """Compare-and-refresh after the Ads API answered 401 to ``rejected_access_token``.

        Refreshes only if that token is still the current one; any number of threads
        reporting the same rejected token cause at most one refresh.
        """
        token = self._call(
            "refresh_if_current",
            lambda m: m.refresh_if_current(account_id, rejected_access_token),
        )
        return self._remember(account_id, token)

    # ------------------------------------------------------------------ accounts

    def add_account(
        self, account_id: str, refresh_token: str, *, authorized_at: float | None = None
    ) -> None:
        """Store ``refresh_token`` for ``account_id``; the first use fetches an access token.

        ``authorized_at`` (POSIX seconds) is when the grant was made, default now.
        """
        self._call(
            "add_account",
            lambda m: m.add_account(account_id, refresh_token, authorized_at=authorized_at),
        )
        self._tokens.pop(account_id, None)

    def set_client_secrets(self, client_secrets: str | Sequence[str]) -> None:
        """Use ``client_secrets`` (newest first) from now on; tokens and timers are kept.

        See :meth:`AsyncTokenManager.set_client_secrets`. Raises ``ValueError`` for an
        empty list.
        """
        secrets = ClientSecrets.parse(client_secrets)  # a bad list fails in this thread

        async def swap(manager: AsyncTokenManager) -> None:
            manager.set_client_secrets(secrets)

        self._call("set_client_secrets", swap)

    def exchange_code(
        self,
        account_id: str,
        code: str,
        *,
        redirect_uri: str,
        code_verifier: str | None = None,
    ) -> Token:
        """Trade an authorization code for the account's first tokens, and store them.

        Raises :class:`InvalidGrantError` for a used, expired or mismatched code.
        """
        token = self._call(
            "exchange_code",
            lambda m: m.exchange_code(
                account_id, code, redirect_uri=redirect_uri, code_verifier=code_verifier
            ),
        )
        return self._remember(account_id, token)

    def remove_account(self, account_id: str) -> None:
        """Forget ``account_id`` here and in the store. Raises :class:`AccountNotFoundError`."""
        self._tokens.pop(account_id, None)
        self._call("remove_account", lambda m: m.remove_account(account_id))

    def accounts(self) -> list[str]:
        """The account ids in the store, sorted."""
        return self._call("accounts", lambda m: m.accounts())

    def status(self, account_id: str) -> AccountStatus:
        """Where ``account_id`` stands (fresh, due, expired or needs-reauth), with its expiry."""
        return self._call("status", lambda m: m.status(account_id))

    def authorization_url(
        self,
        *,
        redirect_uri: str,
        state: str,
        scope: str = DEFAULT_SCOPE,
        code_challenge: str | None = None,
    ) -> str:
        """The consent URL to send a user to; computed here, without crossing threads."""
        return self._manager.authorization_url(
            redirect_uri=redirect_uri, state=state, scope=scope, code_challenge=code_challenge
        )

    def get_grantless_token(self, scope: str) -> str:
        """A ``client_credentials`` token for ``scope``, as
        :meth:`AsyncTokenManager.get_grantless_token`; a fresh cached one costs no hop."""
        if _get_running_loop() is not None:
            self._check_caller()
        grantless = getattr(self._manager, "_grantless", None)
        cached: str | None = grantless.cached(scope) if grantless is not None else None
        if cached is not None:
            return cached
        return self._call("get_grantless_token", lambda m: m.get_grantless_token(scope))

    # ------------------------------------------------------------------ HTTP clients

    def token_source(self, account_id: str) -> BlockingAccountTokenSource:
        """What the sync adapters read ``account_id``'s tokens from (cached, fetch, compare)."""
        from ._sources import BlockingAccountTokenSource

        return BlockingAccountTokenSource(self, account_id)

    def httpx_auth(
        self,
        account_id: str,
        *,
        api: str = "ads",
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Sequence[str] | None = None,
    ) -> SyncHttpxAuth:
        """An ``httpx.Auth`` for a sync ``httpx.Client``, signing for ``account_id``.

        The headers, origins and retry rules of :meth:`AsyncTokenManager.middleware`.
        Needs the ``httpx`` extra. A fresh cached token costs no thread hop.
        """
        from ._httpx import SyncHttpxAuth

        return SyncHttpxAuth(
            self.token_source(account_id),
            api=api,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )

    def requests_auth(
        self,
        account_id: str,
        *,
        api: str = "ads",
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Sequence[str] | None = None,
    ) -> RequestsAuth:
        """A ``requests.auth.AuthBase`` signing for ``account_id``; needs the ``requests`` extra.

        The headers, origins and retry rules of :meth:`AsyncTokenManager.middleware`.
        """
        from ._requests import RequestsAuth

        return RequestsAuth(
            self.token_source(account_id),
            api=api,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )
