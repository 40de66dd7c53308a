"""httpx adapters: ``httpx.Auth`` flows over ``aioamztoken._signing``.

Needs the ``httpx`` extra (``pip install aioamztoken[httpx]``); this module is imported
only by :meth:`~aioamztoken.AsyncTokenManager.httpx_auth` and
:meth:`~aioamztoken.BlockingTokenManager.httpx_auth`.

How httpx 0.28 behaves (checked against its source): the auth flow runs once per
``client.send()``; redirects are followed *inside* one step of the flow, without the
auth, each hop's headers copied from the previous hop's with only ``Authorization``
stripped when the origin changes. An ``x-amz-access-token`` (and the Amazon headers)
would ride along to a pre-signed S3 URL. So every header this adapter adds is taken
off the request again as soon as its body has been sent: a redirect hop that httpx
builds afterwards carries none of them, whatever its origin, and a response whose
to a redirect hop is handed back as it is.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence

try:
    import httpx
except ImportError as exc:  # the extra is not installed: say which one
    raise ImportError(
        "the httpx adapters need httpx: pip install 'aioamztoken[httpx]'", name="httpx"
    ) from exc

from ._errors import EventLoopError
from ._signing import (
    AsyncTokenSource,
    SigningPolicy,
    SyncTokenSource,
    Verdict,
    body_replayable,
    decide,
    host_port,
)

__all__ = ["AsyncHttpxAuth", "SyncHttpxAuth"]


class WrongClientError(EventLoopError, TypeError):
    """An httpx auth was used with the other kind of client (sync vs async)."""


class _Unsigning:
    """Takes our headers off the request once its body has been sent (see the module)."""

    def __init__(self, inner: object, request: httpx.Request, names: tuple[str, ...]) -> None:
        self._inner = inner
        self._request = request
        self._names = names

    def strip(self) -> None:
        headers = self._request.headers
        for name in self._names:
            # ``del`` scans the headers once; ``pop`` would scan them twice.
            with contextlib.suppress(KeyError):
                del headers[name]


class _UnsigningSync(_Unsigning, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        inner = self._inner
        assert isinstance(inner, httpx.SyncByteStream)
        yield from inner
        self.strip()


class _UnsigningAsync(_Unsigning, httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        inner = self._inner
        assert isinstance(inner, httpx.AsyncByteStream)
        async for chunk in inner:
            yield chunk
        self.strip()


class _UnsigningBoth(_UnsigningSync, _UnsigningAsync):
    """For a body that is both (bytes: ``httpx.ByteStream``)."""


def _unsigning(inner: object, request: httpx.Request, names: tuple[str, ...]) -> object:
    sync = isinstance(inner, httpx.SyncByteStream)
    if sync and isinstance(inner, httpx.AsyncByteStream):
        return _UnsigningBoth(inner, request, names)
    if sync:
        return _UnsigningSync(inner, request, names)
    if isinstance(inner, httpx.AsyncByteStream):
        return _UnsigningAsync(inner, request, names)
    return inner  # pragma: no cover - httpx always makes one of the two


class _HttpxAuthBase(httpx.Auth):
    def __init__(
        self,
        client_id: str,
        *,
        api: str,
        profile_id: str | int | None,
        ads_account_id: str | None,
        manager_account_id: str | None,
        origins: Sequence[object] | None,
    ) -> None:
        self._policy = SigningPolicy(
            api,
            client_id,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )
        self._names = self._policy.header_names()
        self._statuses = frozenset(s for s in (401, 403) if s == 401 or self._policy.needs_body(s))

    @property
    def api(self) -> str:
        """``"ads"`` or ``"sp-api"``: which headers are sent."""
        return self._policy.api

    @property
    def origins(self) -> list[str]:
        """The origins that get the token, sorted (default ports left out)."""
        return list(self._policy.origins)

    def allows(self, url: str | httpx.URL) -> bool:
        """True when a request to ``url`` gets the token and the Amazon headers."""
        url = httpx.URL(url) if isinstance(url, str) else url
        return self._allowed(url)

    def _allowed(self, url: httpx.URL) -> bool:
        scheme = url.scheme
        return self._policy.origins.allows(
            scheme, host_port(url.raw_host.decode("ascii"), url.port, scheme)
        )

    def _wants(self, request: httpx.Request) -> bool:
        policy = self._policy
        return self._allowed(request.url) and not policy.leaves_alone(
            policy.token_header in request.headers
        )

    def _sign(self, request: httpx.Request, access_token: str, stream: object) -> None:
        policy = self._policy
        headers = request.headers
        headers[policy.token_header] = policy.token_value(access_token)
        added = [policy.token_header]
        for name, value in policy.headers(request.url.path):
            if name not in headers:
                headers[name] = value
                added.append(name)
        request.stream = _unsigning(stream, request, tuple(added))  # type: ignore[assignment]

    @staticmethod
    def _replayable(stream: object) -> bool:
        if isinstance(stream, httpx.ByteStream):
            return True  # bytes, text, JSON, url-encoded forms
        # A multipart body renders its fields afresh on every iteration, and httpx
        # rewinds a file field itself: it can be sent again when every file is bytes,
        # text or seekable. Anything else httpx streams (an iterator, a file passed as
        # ``content``) is sent once.
        fields = getattr(stream, "fields", None)
        if type(stream).__name__ != "MultipartStream" or not isinstance(fields, list):
            return False
        return all(body_replayable(getattr(field, "file", None)) for field in fields)

    def _verdict(
        self,
        request: httpx.Request,
        response: httpx.Response,
        token: str,
        guard: object,
        *,
        retried: bool,
        stream: object,
    ) -> Verdict:
        if response.request is not request:
            return Verdict.RETURN  # a redirect hop answered: not the request we signed
        from ._signing import RejectionGuard

        assert isinstance(guard, RejectionGuard)
        return decide(
            self._policy,
            guard,
            status=response.status_code,
            body=response.content if self._policy.needs_body(response.status_code) else None,
            token=token,
            retried=retried,
            replayable=self._replayable(stream),
            now=time.monotonic(),
        )


class AsyncHttpxAuth(_HttpxAuthBase):
    """An ``httpx.Auth`` for ``httpx.AsyncClient``: an account's or a grantless token.

    Build it with :meth:`~aioamztoken.AsyncTokenManager.httpx_auth` or
    :meth:`~aioamztoken.AsyncTokenManager.grantless_httpx_auth`; pass it as
    ``AsyncClient(auth=...)`` or per request. Same headers, origins, retry and cooldown rules as
    :class:`~aioamztoken.AdsApiMiddleware`. Bytes, text, JSON, forms and multipart
    bodies of bytes or seekable files are sent again after a refresh; a body httpx
    streams (an iterator, a file passed as ``content``) is not sent twice: the
    rejection is returned. Used with a sync ``httpx.Client`` it
    raises an error pointing to :meth:`~aioamztoken.BlockingTokenManager.httpx_auth`.

    Concurrency: any number of concurrent requests on the manager's event loop.
    """

    def __init__(
        self,
        source: AsyncTokenSource,
        *,
        api: str = "ads",
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Sequence[object] | None = None,
    ) -> None:
        super().__init__(
            source.client_id,
            api=api,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )
        self._source = source

    def __repr__(self) -> str:
        return f"<AsyncHttpxAuth api={self.api!r} origins={self.origins}>"

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise WrongClientError(
            "AsyncTokenManager.httpx_auth() is for httpx.AsyncClient; with a sync "
            "httpx.Client use BlockingTokenManager(...).httpx_auth(...) instead"
        )
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self._wants(request):
            yield request
            return
        source = self._source
        stream = request.stream
        token = source.cached() or await source.fetch()
        self._sign(request, token, stream)
        response = yield request
        status = response.status_code
        if status not in self._statuses:
            return  # the hot path: not a rejection
        if self._policy.needs_body(status):
            await response.aread()
        if self._verdict(
            request, response, token, source.guard, retried=False, stream=stream
        ) is not (Verdict.RETRY):
            return
        token = await source.refresh_if_current(token)
        self._sign(request, token, stream)
        response = yield request
        if self._policy.needs_body(response.status_code):
            await response.aread()
        self._verdict(request, response, token, source.guard, retried=True, stream=stream)


class SyncHttpxAuth(_HttpxAuthBase):
    """An ``httpx.Auth`` for a sync ``httpx.Client``, fed by a blocking manager.

    Build it with :meth:`~aioamztoken.BlockingTokenManager.httpx_auth`. Same rules as
    :class:`AsyncHttpxAuth`. Concurrency: safe to share between threads.
    """

    def __init__(
        self,
        source: SyncTokenSource,
        *,
        api: str = "ads",
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Sequence[object] | None = None,
    ) -> None:
        super().__init__(
            source.client_id,
            api=api,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )
        self._source = source

    def __repr__(self) -> str:
        return f"<SyncHttpxAuth api={self.api!r} origins={self.origins}>"

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise WrongClientError(
            "BlockingTokenManager.httpx_auth() is for a sync httpx.Client; with "
            "httpx.AsyncClient use AsyncTokenManager.httpx_auth(...) instead"
        )
        yield request  # pragma: no cover - makes this a generator

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._wants(request):
            yield request
            return
        source = self._source
        stream = request.stream
        token = source.cached() or source.fetch()
        self._sign(request, token, stream)
        response = yield request
        status = response.status_code
        if status not in self._statuses:
            return  # the hot path: not a rejection
        if self._policy.needs_body(status):
            response.read()
        if self._verdict(
            request, response, token, source.guard, retried=False, stream=stream
        ) is not (Verdict.RETRY):
            return
        token = source.refresh_if_current(token)
        self._sign(request, token, stream)
        response = yield request
        if self._policy.needs_body(response.status_code):
            response.read()
        self._verdict(request, response, token, source.guard, retried=True, stream=stream)
