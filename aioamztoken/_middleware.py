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
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from multidict import CIMultiDict, istr
from yarl import URL

from ._signing import (
    UNIFIED_PREFIX,
    AsyncTokenSource,
    SigningPolicy,
    Verdict,
    decide,
)
from ._signing import (
    normalize_origin as _normalize_origin,
)

if TYPE_CHECKING:
    from ._manager import AsyncTokenManager

__all__ = ["AdsApiMiddleware", "AdsApiTraceConfig", "middleware_logger", "normalize_origin"]

#: INFO: requests answered 401 and the retries made for them (:class:`AdsApiTraceConfig`);
#: DEBUG: each decision of the middleware. Never a header value.
middleware_logger = logging.getLogger("aioamztoken.middleware")

Origins = Sequence[str | URL]


def normalize_origin(origin: str | URL) -> tuple[str, str]:
    """``(scheme, host[:port])`` of an origin; default ports dropped (see :mod:`._signing`).

    Raises ``ValueError`` for anything but an absolute ``http``/``https`` origin.
    """
    return _normalize_origin(origin)


class AdsApiMiddleware:
    """An aiohttp client middleware that signs requests to Amazon API origins.

    Build it with :meth:`~aioamztoken.AsyncTokenManager.middleware` (an account's token,
    Ads API or SP-API) or :meth:`~aioamztoken.AsyncTokenManager.grantless_middleware` (a
    grantless SP-API token) and pass it to ``aiohttp.ClientSession(middlewares=[...])``
    (or per request). The decisions are those of
    :class:`~aioamztoken._signing.SigningPolicy`; this only moves bytes.

    - For a request to an allowed origin it sets the token header (``Authorization:
      Bearer <token>`` for ``api="ads"``, ``x-amz-access-token`` for ``api="sp-api"``)
      and, for the Ads API, ``Amazon-Advertising-API-ClientId`` (plus
      ``Amazon-Ads-ClientId`` on unified ``/adsApi/`` paths) and the configured
      ``Amazon-Advertising-API-Scope``, ``Amazon-Ads-AccountId`` and
      ``Amazon-Ads-Manager-AccountId``. A header the caller set on the request wins over
      a configured value. The token is fetched as each request is sent (a cache read
      when fresh), so long report polls never send an expired one.
    - An SP-API request that already carries ``x-amz-access-token`` (a Restricted Data
      Token) is sent untouched and never refreshed-and-retried.
    - Requests to any other origin pass through untouched: no token, no Amazon header.
      That covers pre-signed S3 report URLs, including when an API endpoint redirects
      to one (aiohttp runs the middleware again for every redirect hop).
    - On a rejected token (a 401; for the SP-API also a 403 whose ``errors[]`` says the
      access token expired or is revoked, malformed or invalid) it reads and releases
      that response, refreshes with compare-and-refresh (only if the rejected token is
      still the current one, so 200 concurrent 401s cause one refresh) and sends the
      request once more. The second answer is returned whatever it is: never a loop, at
      most two sends. If the refreshed token is rejected too, later rejections of that
      same token are returned at once, without refreshing, for a cooldown
      (:class:`~aioamztoken._signing.RejectionGuard`): a 401 that refreshing does not
      cure is not amplified. Any other 403 (a missing role) is returned as it is.
    - Bodies made of bytes, str, JSON, url-encoded or multipart forms, and seekable
      files are sent again intact. A body that cannot be replayed (an async generator,
      a stream, an unseekable file: aiohttp marks its payload ``consumed``) is not
      retried: the rejection is returned to the caller, still readable.
    - If the refresh itself fails, the typed error is raised from the request:
      :class:`InvalidGrantError` (the account needs re-authorization),
      :class:`InvalidClientError`, :class:`TokenEndpointError`, :class:`StorageError`
      or :class:`AccountNotFoundError`. The rejected response has been released by then.
      The same errors come out of the first token fetch.
    - The manager's own token requests never pass through a user's session middlewares,
      so there is no recursion even when the token endpoint is an allowed origin.

    Concurrency: one instance may serve any number of concurrent requests on the
    manager's event loop; not thread-safe.
    """

    __slots__ = (
        "_cached",
        "_classic",
        "_hosts",
        "_policy",
        "_rdt",
        "_source",
        "_statuses",
        "_token_header",
        "_unified",
    )

    def __init__(
        self,
        source: AsyncTokenSource | AsyncTokenManager,
        account_id: str | None = None,
        *,
        api: str = "ads",
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Origins | None = None,
    ) -> None:
        if account_id is not None:
            # The older spelling, AdsApiMiddleware(manager, account_id, ...).
            manager = cast("AsyncTokenManager", source)
            source = manager.token_source(account_id)
        elif not hasattr(source, "fetch"):
            raise TypeError("pass a token source, or a manager and an account_id")
        source = cast("AsyncTokenSource", source)
        self._source = source
        policy = self._policy = SigningPolicy(
            api,
            source.client_id,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )
        # The policy's answers, computed once, in the forms aiohttp's hot path likes best
        # (istr keys, a bound method, a dict): what to do stays the policy's decision.
        self._hosts = policy.origins.table
        self._rdt = policy.leaves_alone(True)
        self._token_header = istr(policy.token_header)
        self._classic = tuple((istr(n), v) for n, v in policy.headers(""))
        self._unified = tuple((istr(n), v) for n, v in policy.headers(UNIFIED_PREFIX))
        self._statuses = frozenset(s for s in (401, 403) if s == 401 or policy.needs_body(s))
        self._cached = source.cached

    def __repr__(self) -> str:
        return (
            f"<AdsApiMiddleware api={self.api!r} account={self.account_id!r} "
            f"profile={self.profile_id!r} origins={self.origins}>"
        )

    @property
    def api(self) -> str:
        """``"ads"`` or ``"sp-api"``: which headers are sent."""
        return self._policy.api

    @property
    def account_id(self) -> str | None:
        """The account whose token is sent (``None`` for a grantless token)."""
        return getattr(self._source, "account_id", None)

    @property
    def profile_id(self) -> str | None:
        """The ``Amazon-Advertising-API-Scope`` value sent, if any."""
        return dict(self._policy.headers("")).get("Amazon-Advertising-API-Scope")

    @property
    def origins(self) -> list[str]:
        """The origins that get the token, sorted (default ports left out)."""
        return list(self._policy.origins)

    def allows(self, url: str | URL) -> bool:
        """True when a request to ``url`` gets the token and the Amazon headers."""
        if isinstance(url, str):
            url = URL(url)
        return self._policy.origins.allows(url.scheme, url.host_port_subcomponent)

    def _sign(self, headers: CIMultiDict[str], path: str, access_token: str) -> None:
        headers[self._token_header] = self._policy.token_value(access_token)
        for name, value in self._unified if path.startswith(UNIFIED_PREFIX) else self._classic:
            if name not in headers:
                headers[name] = value

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        # The hot path: a dict hit, a cache read and a few header writes.
        url = request.url
        schemes = self._hosts.get(url.host_port_subcomponent)
        if (
            schemes is None
            or url.scheme not in schemes
            or (self._rdt and self._token_header in request.headers)
        ):
            return await handler(request)
        # The synchronous cache read spares a coroutine per request when the token is fresh.
        access_token = self._cached() or await self._source.fetch()
        self._sign(request.headers, url.raw_path, access_token)
        response = await handler(request)
        if response.status not in self._statuses:
            return response
        return await self._rejected(request, handler, response, access_token)

    async def _rejected(
        self,
        request: ClientRequest,
        handler: ClientHandlerType,
        response: ClientResponse,
        rejected: str,
    ) -> ClientResponse:
        """A 401 (or an SP-API 403): decide, release, compare-and-refresh, send once more."""
        policy = self._policy
        trace = _current_trace.get()
        body = await _read(response) if policy.needs_body(response.status) else None
        verdict = decide(
            policy,
            self._source.guard,
            status=response.status,
            body=body,
            token=rejected,
            retried=False,
            replayable=not _consumed(request),
            now=time.monotonic(),
        )
        if verdict is Verdict.RETURN:
            return response
        if verdict is Verdict.UNCURED:
            if trace is not None:
                trace.uncured = True
            middleware_logger.debug(
                "%s %s answered %d to a token a refresh did not cure; returned at once",
                request.method,
                _loggable(request.url),
                response.status,
            )
            return response
        if verdict is Verdict.NOT_REPLAYABLE:
            self._not_replayable(request, trace)
            return response
        # Read the (small) body first: the connection goes back to the pool, and the
        # response stays readable should it be returned after all.
        await _read(response)
        response.release()
        # Let a body writer cut short by the rejection settle before the body is sent again.
        await request.close()
        if _consumed(request):
            self._not_replayable(request, trace)
            return response
        if trace is not None:
            trace.rejected += 1
            trace.account_id = self.account_id
        token = await self._source.refresh_if_current(rejected)
        self._sign(request.headers, request.url.raw_path, token)
        if trace is not None:
            trace.retried += 1
        retry = await handler(request)
        if retry.status == 401 or policy.needs_body(retry.status):
            decide(
                policy,
                self._source.guard,
                status=retry.status,
                body=await _read(retry) if policy.needs_body(retry.status) else None,
                token=token,
                retried=True,
                replayable=True,
                now=time.monotonic(),
            )
        return retry

    def _not_replayable(self, request: ClientRequest, trace: _TraceContext | None) -> None:
        if trace is not None:
            trace.unreplayable = True
        middleware_logger.debug(
            "%s %s: token rejected for account %r; not retried: its body cannot be sent again",
            request.method,
            _loggable(request.url),
            self.account_id,
        )


async def _read(response: ClientResponse) -> bytes | None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        return await response.read()
    return None


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
        self.uncured = False
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
