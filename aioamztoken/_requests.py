"""The requests adapter: a ``requests.auth.AuthBase`` over ``aioamztoken._signing``.

Needs the ``requests`` extra (``pip install aioamztoken[requests]``); imported only by
:meth:`~aioamztoken.BlockingTokenManager.requests_auth`.

How requests 2.x behaves (checked against its source): the auth runs once, when the
request is prepared; the response hooks it registers run for every response of the
session's ``send()``, before redirects are resolved; a redirect hop is a copy of the
request that was sent, with only ``Authorization`` stripped when the host changes. So
the response hook takes every header this adapter added off a request whose answer
redirects to an origin that is not allowed: ``x-amz-access-token`` never reaches a
pre-signed S3 URL. The hook is shared by every hop (``PreparedRequest.copy()`` keeps the
hooks), and a hop is a copy of the previous one: so it also strips a hop that an
allowed origin redirected to itself before redirecting to S3, knowing which headers
were added from the closure it was registered with (the hop carries no mark of ours).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

try:
    import requests
    from requests.auth import AuthBase
    from requests.utils import rewind_body
except ImportError as exc:  # the extra is not installed: say which one
    raise ImportError(
        "the requests adapter needs requests: pip install 'aioamztoken[requests]'",
        name="requests",
    ) from exc

from ._signing import SigningPolicy, SyncTokenSource, Verdict, body_replayable, decide

__all__ = ["RequestsAuth"]

_SIGNED = "_aioamztoken_signed"
#: How many (scheme, netloc) answers an auth remembers.
_NETLOC_MEMO = 256


class RequestsAuth(AuthBase):
    """A ``requests`` auth for an account's token, fed by a blocking manager.

    Build it with :meth:`~aioamztoken.BlockingTokenManager.requests_auth`; pass it as
    ``session.auth = ...`` or ``requests.get(url, auth=...)``. Same headers, origins,
    retry and cooldown rules as :class:`~aioamztoken.AdsApiMiddleware`. A body that is
    bytes, text or a seekable file (rewound) is sent again after a refresh; a generator
    is not (the rejection is returned).

    Concurrency: safe to share between threads (requests' sessions are not, though).
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
        self._source = source
        self._policy = SigningPolicy(
            api,
            source.client_id,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )
        self._netlocs: dict[tuple[str, str], bool] = {}

    def __repr__(self) -> str:
        return f"<RequestsAuth api={self.api!r} origins={self.origins}>"

    @property
    def api(self) -> str:
        """``"ads"`` or ``"sp-api"``: which headers are sent."""
        return self._policy.api

    @property
    def origins(self) -> list[str]:
        """The origins that get the token, sorted (default ports left out)."""
        return list(self._policy.origins)

    def allows(self, url: str) -> bool:
        """True when a request to ``url`` gets the token and the Amazon headers."""
        return self._policy.origins.allows_url(url)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        policy = self._policy
        parts = urlsplit(r.url or "")
        if not self._allows(parts.scheme, parts.netloc, r.url or ""):
            return r
        if policy.leaves_alone(policy.token_header in r.headers):
            return r
        source = self._source
        token = source.cached() or source.fetch()
        added = self._sign(r, token, parts.path)
        r.register_hook("response", functools.partial(self._on_response, added))
        return r

    def _allows(self, scheme: str, netloc: str, url: str) -> bool:
        # The policy's answer per (scheme, netloc), remembered: parsing a host and port
        # costs more than the rest of the signing.
        key = (scheme, netloc)
        allowed = self._netlocs.get(key)
        if allowed is None:
            allowed = self._policy.origins.allows_url(url)
            if len(self._netlocs) < _NETLOC_MEMO:
                self._netlocs[key] = allowed
        return allowed

    def _sign(self, r: requests.PreparedRequest, token: str, path: str) -> tuple[str, ...]:
        policy = self._policy
        headers = r.headers
        headers[policy.token_header] = policy.token_value(token)
        added = [policy.token_header]
        for name, value in policy.headers(path):
            if name not in headers:
                headers[name] = value
                added.append(name)
        names = tuple(added)
        setattr(r, _SIGNED, (token, names))
        return names

    def _unsign_for_redirect(self, response: requests.Response, names: tuple[str, ...]) -> None:
        if not response.is_redirect:
            return
        target = urljoin(response.url, response.headers.get("location", ""))
        if self._policy.origins.allows_url(target):
            return
        headers = response.request.headers
        for name in names:
            headers.pop(name, None)

    def _on_response(
        self, added: tuple[str, ...], response: requests.Response, **kwargs: Any
    ) -> requests.Response:
        request = response.request
        signed = getattr(request, _SIGNED, None)
        if signed is None:
            # A redirect hop: a copy of a request we signed (or of an earlier hop), with
            # the headers we added unless a hook took them off. The next hop is copied
            # from this one: keep them off it if it leaves the allowed origins.
            self._unsign_for_redirect(response, added)
            return response
        if getattr(request, "_aioamztoken_retried", False):
            return response  # our own retry, already handled
        self._unsign_for_redirect(response, signed[1])
        policy = self._policy
        token = signed[0]
        status = response.status_code
        if status != 401 and not policy.needs_body(status):
            return response
        body = response.content if policy.needs_body(status) else None
        verdict = decide(
            policy,
            self._source.guard,
            status=status,
            body=body,
            token=token,
            retried=False,
            replayable=_replayable(request),
            now=time.monotonic(),
        )
        if verdict is not Verdict.RETRY:
            return response
        response.content  # noqa: B018 - read it so that the connection can be reused
        response.close()
        if request.body is not None and not isinstance(request.body, (bytes, str)):
            rewind_body(request)
        token = self._source.refresh_if_current(token)
        self._sign(request, token, urlsplit(request.url or "").path)
        setattr(request, "_aioamztoken_retried", True)  # noqa: B010 - a mark of our own
        assert response.connection is not None
        retry: requests.Response = response.connection.send(request, **kwargs)
        retry.history.append(response)
        retry.request = request
        self._unsign_for_redirect(retry, signed[1])
        status = retry.status_code
        if status == 401 or policy.needs_body(status):
            decide(
                policy,
                self._source.guard,
                status=status,
                body=retry.content if policy.needs_body(status) else None,
                token=token,
                retried=True,
                replayable=True,
                now=time.monotonic(),
            )
        return retry


def _replayable(request: requests.PreparedRequest) -> bool:
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    return body_replayable(body) and isinstance(getattr(request, "_body_position", None), int)
