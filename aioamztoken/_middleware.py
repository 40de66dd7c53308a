"""The aiohttp client middleware that signs Amazon Ads API requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from yarl import URL

from ._logging import logger
from ._models import ADS_API_ORIGINS

if TYPE_CHECKING:
    from ._manager import AsyncTokenManager

__all__ = ["AdsApiMiddleware", "normalize_origin"]

_Origin = tuple[str, str, int | None]


def normalize_origin(origin: str | URL) -> _Origin:
    """``(scheme, host, port)`` of an origin or URL, lower-cased, default port filled in."""
    url = origin if isinstance(origin, URL) else URL(origin)
    if not url.scheme or not url.host:
        raise ValueError(f"not an origin (scheme://host[:port]): {str(origin)!r}")
    return (url.scheme.lower(), url.host.lower().rstrip("."), url.port)


class AdsApiMiddleware:
    """Adds ``Authorization: Bearer …`` and the Ads API headers, for allowed origins only.

    - The token is fetched when each request is sent, so long report polls never send
      an expired one.
    - Requests to any other origin (pre-signed S3 report URLs, redirects elsewhere)
      pass through untouched: no bearer, no Amazon header.
    - On a 401 it releases the response, refreshes with compare-and-refresh (only if the
      rejected token is still the current one) and retries exactly once. A body that
      cannot be replayed (a consumed stream) is not retried: the 401 is returned.

    Concurrency: one instance may serve any number of concurrent requests on the
    manager's event loop.
    """

    __slots__ = ("_account_id", "_client_id", "_manager", "_origins", "_profile_id")

    def __init__(
        self,
        manager: AsyncTokenManager,
        account_id: str,
        *,
        profile_id: str | int | None = None,
        origins: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        self._manager = manager
        self._account_id = account_id
        self._client_id = manager.client_id
        self._profile_id = None if profile_id is None else str(profile_id)
        self._origins = frozenset(
            normalize_origin(o) for o in (ADS_API_ORIGINS if origins is None else origins)
        )

    def __repr__(self) -> str:
        origins = sorted(f"{s}://{h}:{p}" for s, h, p in self._origins)
        return (
            f"<AdsApiMiddleware account={self._account_id!r} profile={self._profile_id!r} "
            f"origins={origins}>"
        )

    def allows(self, url: URL) -> bool:
        """True when requests to ``url`` get the bearer token."""
        host = url.host
        if host is None:
            return False
        return (url.scheme.lower(), host.lower().rstrip("."), url.port) in self._origins

    def _sign(self, request: ClientRequest, access_token: str) -> None:
        headers = request.headers
        headers["Authorization"] = f"Bearer {access_token}"
        headers["Amazon-Advertising-API-ClientId"] = self._client_id
        if self._profile_id is not None:
            headers["Amazon-Advertising-API-Scope"] = self._profile_id

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if not self.allows(request.url):
            return await handler(request)
        manager = self._manager
        access_token = await manager.get_access_token(self._account_id)
        self._sign(request, access_token)
        response = await handler(request)
        if response.status != 401 or getattr(request.body, "consumed", False):
            return response
        response.release()
        logger.info(
            "ads api answered 401 for account %r (%s %s); refreshing once and retrying",
            self._account_id,
            request.method,
            request.url.path,
        )
        token = await manager.refresh_if_current(self._account_id, access_token)
        self._sign(request, token.access_token)
        return await handler(request)
