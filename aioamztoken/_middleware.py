"""The aiohttp client middleware that signs Amazon Ads API requests, and its trace config.

How it behaves on aiohttp 3.14 (checked against its source):

- aiohttp builds a new :class:`aiohttp.ClientRequest` for every redirect hop, with a
  fresh copy of the caller's headers, and runs the middleware chain again for it. The
  headers we set live only on that hop's request, so on a redirect to another origin
  (a pre-signed S3 URL) nothing of ours is carried over and the origin check keeps the
  token off the new hop. aiohttp's own stripping of ``Authorization`` on cross-origin
  redirects only covers headers the caller passed in.
- Trace ``on_request_end`` fires once per ``session.request()``, for the final response:
  a 401 the middleware retried is invisible to it. The middleware therefore reports
  its retries to :class:`AdsApiTraceConfig` through a context variable that the trace
  config's ``on_request_start`` sets (same task, same context): no marker header is
  ever sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from multidict import CIMultiDict, istr
from yarl import URL

from ._models import ADS_API_ORIGINS

if TYPE_CHECKING:
    from ._manager import AsyncTokenManager

__all__ = ["AdsApiMiddleware", "AdsApiTraceConfig", "middleware_logger", "normalize_origin"]

#: INFO: requests answered 401 and the retries made for them (:class:`AdsApiTraceConfig`);
#: DEBUG: each decision of the middleware. Never a header value.
middleware_logger = logging.getLogger("aioamztoken.middleware")

_AUTHORIZATION = istr("Authorization")
_CLIENT_ID = istr("Amazon-Advertising-API-ClientId")
_SCOPE = istr("Amazon-Advertising-API-Scope")

Origins = Sequence[str | URL]


def normalize_origin(origin: str | URL) -> tuple[str, str]:
    """``(scheme, host[:port])`` of an origin, as yarl normalizes it; default ports dropped.

    Raises ``ValueError`` for anything but an absolute ``http``/``https`` origin
    (``scheme://host[:port]``, an optional trailing ``/``): paths, queries, fragments
    and credentials are refused rather than silently ignored.
    """
    url = origin if isinstance(origin, URL) else URL(str(origin).strip())
    if (
        url.scheme not in ("http", "https")
        or not url.raw_host
        or url.raw_path not in ("", "/")
        or url.raw_query_string
        or url.raw_fragment
        or url.raw_user is not None
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {str(origin)!r}")
    host_port = url.host_port_subcomponent
    assert host_port is not None
    return url.scheme, host_port


class AdsApiMiddleware:
    """An aiohttp client middleware that signs requests to Amazon Ads API origins.

    Build it with :meth:`AsyncTokenManager.middleware` and pass it to
    ``aiohttp.ClientSession(middlewares=[...])`` (or per request).

    - For a request to an allowed origin it sets ``Authorization: Bearer <token>`` and
      ``Amazon-Advertising-API-ClientId``, plus ``Amazon-Advertising-API-Scope`` when a
      ``profile_id`` was given. The token is fetched as each request is sent (a cache
      read when fresh), so long report polls never send an expired one.
    - Requests to any other origin pass through untouched: no bearer, no Amazon header.
      That covers pre-signed S3 report URLs, including when an Ads API endpoint
      redirects to one (aiohttp runs the middleware again for every redirect hop).
    - On a 401 from an allowed origin it reads and releases that response, refreshes
      with compare-and-refresh (only if the rejected token is still the current one,
      so 200 concurrent 401s cause one refresh) and sends the request once more. The
      second answer is returned whatever it is: never a loop, at most two sends.
    - Bodies made of bytes, str, JSON, url-encoded or multipart forms, and seekable
      files are sent again intact. A body that cannot be replayed (an async generator,
      a stream, an unseekable file: aiohttp marks its payload ``consumed``) is not
      retried: the 401 response is returned to the caller, still readable.
    - If the refresh itself fails, the typed error is raised from the request:
      :class:`InvalidGrantError` (the account needs re-authorization),
      :class:`InvalidClientError`, :class:`TokenEndpointError`, :class:`StorageError`
      or :class:`AccountNotFoundError`. The 401 response has been released by then.
      The same errors come out of the first token fetch.
    - The manager's own token requests never pass through a user's session middlewares,
      so there is no recursion even when the token endpoint is an allowed origin.

    Concurrency: one instance may serve any number of concurrent requests on the
    manager's event loop; not thread-safe.
    """

    __slots__ = ("_account_id", "_client_id", "_manager", "_origins", "_profile_id", "_signed")

    def __init__(
        self,
        manager: AsyncTokenManager,
        account_id: str,
        *,
        profile_id: str | int | None = None,
        origins: Origins | None = None,
    ) -> None:
        if not account_id:
            raise ValueError("account_id must be a non-empty string")
        if isinstance(origins, (str, URL)):
            raise TypeError("origins must be a list of origins, not a single one")
        self._manager = manager
        self._account_id = account_id
        self._client_id = manager.client_id
        self._profile_id = None if profile_id is None else str(profile_id)
        if self._profile_id is not None and not self._profile_id.strip():
            raise ValueError("profile_id must not be empty")
        # host[:port] -> schemes: a dict hit on a cached string beats hashing a tuple.
        by_host: dict[str, set[str]] = {}
        for origin in ADS_API_ORIGINS if origins is None else origins:
            scheme, host_port = normalize_origin(origin)
            by_host.setdefault(host_port, set()).add(scheme)
        self._origins: dict[str | None, frozenset[str]] = {
            host: frozenset(schemes) for host, schemes in by_host.items()
        }
        # (access token, "Bearer <access token>"): rebuilt only when the token changes.
        self._signed: tuple[str, str] = ("", "")

    def __repr__(self) -> str:
        return (
            f"<AdsApiMiddleware account={self._account_id!r} profile={self._profile_id!r} "
            f"origins={self.origins}>"
        )

    @property
    def account_id(self) -> str:
        """The account whose token is sent."""
        return self._account_id

    @property
    def profile_id(self) -> str | None:
        """The ``Amazon-Advertising-API-Scope`` value sent, if any."""
        return self._profile_id

    @property
    def origins(self) -> list[str]:
        """The origins that get the token, sorted (default ports left out)."""
        return sorted(
            f"{scheme}://{host}" for host, schemes in self._origins.items() for scheme in schemes
        )

    def allows(self, url: str | URL) -> bool:
        """True when a request to ``url`` gets the bearer token and the Amazon headers."""
        if isinstance(url, str):
            url = URL(url)
        schemes = self._origins.get(url.host_port_subcomponent)
        return schemes is not None and url.scheme in schemes

    def _sign(self, headers: CIMultiDict[str], access_token: str) -> None:
        signed = self._signed
        if signed[0] is not access_token:
            signed = self._signed = (access_token, "Bearer " + access_token)
        headers[_AUTHORIZATION] = signed[1]
        headers[_CLIENT_ID] = self._client_id
        if self._profile_id is not None:
            headers[_SCOPE] = self._profile_id

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        # The hot path: a dict hit, a cache read and three header writes.
        url = request.url
        schemes = self._origins.get(url.host_port_subcomponent)
        if schemes is None or url.scheme not in schemes:
            return await handler(request)
        manager = self._manager
        account_id = self._account_id
        # The synchronous cache read spares a coroutine per request when the token is fresh.
        access_token = manager.cached_access_token(account_id) or await manager.get_access_token(
            account_id
        )
        self._sign(request.headers, access_token)
        response = await handler(request)
        if response.status != 401:
            return response
        return await self._retry(request, handler, response, access_token)

    async def _retry(
        self,
        request: ClientRequest,
        handler: ClientHandlerType,
        response: ClientResponse,
        rejected: str,
    ) -> ClientResponse:
        """The 401 path: release, compare-and-refresh, send once more."""
        trace = _current_trace.get()
        if _consumed(request):
            self._not_replayable(request, trace)
            return response
        # Read the (small) 401 body first: the connection goes back to the pool, and the
        # response stays readable should it be returned after all.
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            await response.read()
        response.release()
        # Let a body writer cut short by the 401 settle before the body is sent again.
        await request.close()
        if _consumed(request):
            self._not_replayable(request, trace)
            return response
        if trace is not None:
            trace.rejected += 1
            trace.account_id = self._account_id
        middleware_logger.debug(
            "%s %s answered 401 for account %r: refreshing if that token is still current, "
            "then retrying once",
            request.method,
            _loggable(request.url),
            self._account_id,
        )
        token = await self._manager.refresh_if_current(self._account_id, rejected)
        self._sign(request.headers, token.access_token)
        if trace is not None:
            trace.retried += 1
        self._manager._telemetry.http_retry("ads")
        return await handler(request)

    def _not_replayable(self, request: ClientRequest, trace: _TraceContext | None) -> None:
        if trace is not None:
            trace.unreplayable = True
        middleware_logger.debug(
            "%s %s answered 401 for account %r; not retried: its body cannot be sent again",
            request.method,
            _loggable(request.url),
            self._account_id,
        )


def _consumed(request: ClientRequest) -> bool:
    return bool(getattr(request.body, "consumed", False))


def _loggable(url: URL) -> str:
    """Origin and path only: queries (S3 signatures) and credentials stay out of logs."""
    try:
        return f"{url.origin()}{url.raw_path}"
    except ValueError:
        return url.raw_path


class _TraceContext(SimpleNamespace):
    """Per-request state of :class:`AdsApiTraceConfig`, filled in by the middleware."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rejected = 0
        """401 answers the middleware released before retrying."""
        self.retried = 0
        self.unreplayable = False
        self.account_id: str | None = None
        self.outer: _TraceContext | None = None


_current_trace: contextvars.ContextVar[_TraceContext | None] = contextvars.ContextVar(
    "aioamztoken_trace", default=None
)


class AdsApiTraceConfig(aiohttp.TraceConfig):
    """An :class:`aiohttp.TraceConfig` that counts and logs 401s and the middleware's retries.

    Pass it as ``aiohttp.ClientSession(trace_configs=[mgr.trace_config()])``. For every
    traced request it adds to:

    - :attr:`rejected`: 401 answers received, both those the middleware released before
      retrying and final ones (a persistent 401 counts two: the answer and the retry's);
    - :attr:`retried`: requests the middleware sent again after a 401.

    Each traced request that met a 401 is logged once at INFO on ``aioamztoken.middleware``
    with its method, origin and path and final status: never a header, a query string
    or a token.

    Concurrency: may be attached to any number of sessions on one event loop; the
    counters are plain ints; not thread-safe.
    """

    def __init__(self) -> None:
        super().__init__(trace_config_ctx_factory=_TraceContext)
        self.rejected = 0
        """401 answers received from allowed origins, retried or final."""
        self.retried = 0
        """Requests the middleware sent again after a 401."""
        self.on_request_start.append(self._note_start)
        self.on_request_end.append(self._note_end)
        self.on_request_exception.append(self._note_exception)

    def __repr__(self) -> str:
        return f"<AdsApiTraceConfig rejected={self.rejected} retried={self.retried}>"

    @staticmethod
    async def _note_start(
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        assert isinstance(ctx, _TraceContext)
        ctx.outer = _current_trace.get()
        _current_trace.set(ctx)

    @staticmethod
    def _finish(ctx: SimpleNamespace) -> _TraceContext:
        assert isinstance(ctx, _TraceContext)
        if _current_trace.get() is ctx:
            _current_trace.set(ctx.outer)
        ctx.outer = None
        return ctx

    async def _note_end(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        trace = self._finish(ctx)
        status = params.response.status
        final_401 = status == 401
        self.rejected += trace.rejected + final_401
        self.retried += trace.retried
        if trace.retried:
            middleware_logger.info(
                "%s %s answered 401; the token of account %r was refreshed if still "
                "current and the request retried once: final status %d",
                params.method,
                _loggable(params.url),
                trace.account_id,
                status,
            )
        elif final_401:
            middleware_logger.info(
                "%s %s answered 401 (not retried%s)",
                params.method,
                _loggable(params.url),
                ": the request body cannot be sent again" if trace.unreplayable else "",
            )

    async def _note_exception(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        trace = self._finish(ctx)
        self.rejected += trace.rejected
        self.retried += trace.retried
        if trace.rejected:
            middleware_logger.info(
                "%s %s answered 401 and recovering failed for account %r: %s",
                params.method,
                _loggable(params.url),
                trace.account_id,
                type(params.exception).__name__,
            )
