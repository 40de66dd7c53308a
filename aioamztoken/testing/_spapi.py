"""The emulator's Selling Partner API, grantless tokens and unified Ads API path.

Mixed into :class:`~aioamztoken.testing.AmazonEmulator`:

- :attr:`~SpApiEmulation.spapi_url`, an origin of its own (like
  ``sellingpartnerapi-na.amazon.com``) that checks ``x-amz-access-token`` as Amazon
  does: an expired token is answered **403** with ``{"errors": [{"code":
  "Unauthorized", "message": "Access to requested resource is denied.", "details":
  "The access token you provided has expired."}]}``, an unknown or revoked one with
  "...is revoked, malformed or invalid.", and a missing role (a path in
  :attr:`~SpApiEmulation.spapi_missing_roles`) with the same message and empty
  ``details``. ``Authorization`` is ignored there, as at Amazon. Restricted Data Tokens
  (``POST /tokens/2021-03-01/restrictedDataToken`` or
  :meth:`~SpApiEmulation.issue_restricted_data_token`) are accepted in the same header.
  Grantless paths (``/notifications/v1/destinations``...) take only a grantless token
  of their scope. Any other path answers 200 with ``{"payload": {...}}`` echoing the
  method, path, headers, body, account and grantless scope of the request.
- ``grant_type=client_credentials`` with a ``scope`` on the token endpoint: an access
  token and no refresh token; an unknown scope is ``400 invalid_scope``.
- ``/adsApi/...`` on the Ads API origin (the unified Ads API): besides the bearer and
  ``Amazon-Advertising-API-ClientId`` it requires ``Amazon-Ads-ClientId`` (400 when
  missing, 401 when it is another client's) and an account header,
  ``Amazon-Ads-AccountId`` or ``Amazon-Advertising-API-Scope`` (400 when neither).
"""

from __future__ import annotations

import collections
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

if TYPE_CHECKING:
    from aioamztoken.testing._emulator import ApiRequestRecord

__all__ = ["GRANTLESS_PATHS", "SpApiEmulation"]

ACCESS_TOKEN_HEADER = "x-amz-access-token"
DENIED = "Access to requested resource is denied."
EXPIRED = "The access token you provided has expired."
INVALID = "The access token you provided is revoked, malformed or invalid."
MISSING = "Access token is missing in the request header."
RDT_PATH = "/tokens/2021-03-01/restrictedDataToken"
#: ``GET /emulator/redirect?to=URL`` (on the SP-API and Ads API origins): a 307 to URL,
#: once the token has been checked, as an API that hands out a pre-signed URL would.
REDIRECT_PATH = "/emulator/redirect"

#: Grantless operations (path prefix -> the scope their token must have), after
#: Amazon's "Grantless Operations" page.
GRANTLESS_PATHS: dict[str, str] = {
    "/notifications/v1/destinations": "sellingpartnerapi::notifications",
    "/authorization/v1/authorizationCode": "sellingpartnerapi::migration",
    "/applications/2023-11-30/clientSecret": "sellingpartnerapi::client_credential:rotation",
}
KNOWN_SCOPES = frozenset(GRANTLESS_PATHS.values())


@dataclass(slots=True)
class _Scoped:
    scope: str
    expires_at: float
    """``time.monotonic()`` seconds."""


def spapi_error(status: int, details: str, code: str = "Unauthorized") -> web.Response:
    """An SP-API error answer in Amazon's ``errors[]`` shape."""
    body = {"errors": [{"code": code, "message": DENIED, "details": details}]}
    return web.json_response(body, status=status)


class SpApiEmulation:
    """The SP-API side of the emulator (see the module docstring). Not used on its own."""

    if TYPE_CHECKING:
        _lock: threading.Lock
        _access_tokens: dict[str, Any]
        client_id: str
        token_lifetime: float
        api_log: list[ApiRequestRecord]

        async def _serve(self, app: web.Application) -> str: ...

        async def _echo(self, call: Any) -> web.StreamResponse: ...

    spapi_requests: int
    """Requests to the SP-API origin, whatever their outcome."""
    spapi_log: list[ApiRequestRecord]
    """Every SP-API request, in the order they were answered."""
    client_credentials_grants: int
    """Successful ``client_credentials`` (grantless) grants."""
    spapi_missing_roles: set[str]
    """Path prefixes whose account-token requests are refused as if a role were missing
    (403, empty ``details``)."""

    def _init_spapi(self) -> None:
        self.spapi_requests = 0
        self.spapi_log = []
        self.client_credentials_grants = 0
        self.spapi_missing_roles = set()
        self._grantless_tokens: dict[str, _Scoped] = {}
        self._rdts: dict[str, tuple[str, float]] = {}
        self._grants_by_scope: collections.Counter[str] = collections.Counter()
        self._spapi_faults: collections.deque[web.Response] = collections.deque()
        self._spapi_url: str | None = None

    def _reset_spapi_counters(self) -> None:
        self.spapi_requests = 0
        self.spapi_log.clear()
        self.client_credentials_grants = 0
        self._grants_by_scope.clear()

    @property
    def spapi_url(self) -> str:
        """``http://127.0.0.1:PORT``: the Selling Partner API origin."""
        if self._spapi_url is None:
            raise RuntimeError("the emulator has not been started")
        return self._spapi_url

    async def _start_spapi(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle_spapi)
        self._spapi_url = await self._serve(app)

    # -- credentials and faults --------------------------------------------------------

    def issue_grantless_token(self, scope: str, *, lifetime: float | None = None) -> str:
        """A valid grantless ``Atc|...`` token for ``scope``; no token request is counted."""
        with self._lock:
            return self._new_grantless(scope, self.token_lifetime if lifetime is None else lifetime)

    def _new_grantless(self, scope: str, lifetime: float) -> str:
        token = "Atc|" + secrets.token_urlsafe(48)
        self._grantless_tokens[token] = _Scoped(scope, time.monotonic() + lifetime)
        return token

    def issue_restricted_data_token(self, account_id: str, *, lifetime: float = 3600.0) -> str:
        """A Restricted Data Token (``Atz.sprdt|...``) for ``account_id``."""
        token = "Atz.sprdt|" + secrets.token_urlsafe(48)
        with self._lock:
            self._rdts[token] = (account_id, time.monotonic() + lifetime)
        return token

    def expire_grantless_tokens(self, scope: str | None = None) -> None:
        """Make the grantless tokens of ``scope`` (of every scope if ``None``) expire now."""
        now = time.monotonic()
        with self._lock:
            for grant in self._grantless_tokens.values():
                if scope is None or grant.scope == scope:
                    grant.expires_at = min(grant.expires_at, now)

    def spapi_fail_next(
        self,
        count: int = 1,
        *,
        status: int = 403,
        details: str = EXPIRED,
        code: str = "Unauthorized",
    ) -> None:
        """Answer the next ``count`` SP-API requests with ``status`` and this ``details``,
        whatever their token (the default: Amazon's 403 for an expired token)."""
        body = {"errors": [{"code": code, "message": DENIED, "details": details}]}
        payload = json.dumps(body).encode("utf-8")
        with self._lock:
            for _ in range(count):
                self._spapi_faults.append(
                    web.Response(status=status, body=payload, content_type="application/json")
                )

    def client_credentials_grants_for(self, scope: str) -> int:
        """Successful ``client_credentials`` grants for ``scope``."""
        with self._lock:
            return self._grants_by_scope[scope]

    # -- the token endpoint's client_credentials grant ---------------------------------

    def _client_credentials_grant(self, form: dict[str, str]) -> web.Response:
        scope = form.get("scope", "").strip()
        if not scope:
            return _oauth(400, "invalid_scope", "The scope parameter is missing")
        unknown = [s for s in scope.split() if s not in KNOWN_SCOPES]
        if unknown:
            return _oauth(400, "invalid_scope", f"Unknown scope: {unknown[0]}")
        lifetime = self.token_lifetime
        with self._lock:
            token = self._new_grantless(scope, lifetime)
            self.client_credentials_grants += 1
            self._grants_by_scope[scope] += 1
        expires_in = int(lifetime) if lifetime == int(lifetime) else lifetime
        return web.json_response(
            {
                "access_token": token,
                "scope": scope,
                "token_type": "bearer",
                "expires_in": expires_in,
            },
            headers={hdrs.CACHE_CONTROL: "no-store", hdrs.PRAGMA: "no-cache"},
        )

    # -- the SP-API origin -------------------------------------------------------------

    async def _handle_spapi(self, request: web.Request) -> web.StreamResponse:
        from aioamztoken.testing._emulator import ApiRequestRecord

        arrived = time.monotonic()
        body = await request.read()
        with self._lock:
            fault = self._spapi_faults.popleft() if self._spapi_faults else None
        account_id, scope, problem = self._authenticate_spapi(request)
        if fault is not None:
            response: web.Response = fault
        elif problem is not None:
            response = problem
        elif request.path == REDIRECT_PATH and request.query.get("to"):
            response = web.Response(status=307, headers={hdrs.LOCATION: request.query["to"]})
        elif request.path == RDT_PATH and request.method == hdrs.METH_POST:
            assert account_id is not None
            rdt = self.issue_restricted_data_token(account_id)
            response = web.json_response({"restrictedDataToken": rdt, "expiresIn": 3600})
        else:
            # Amazon wraps v0 answers in "payload"; this echo does the same.
            response = web.json_response(
                {
                    "payload": {
                        "method": request.method,
                        "path": request.path,
                        "headers": dict(request.headers),
                        "body": body.decode("utf-8", "replace"),
                        "account_id": account_id,
                        "scope": scope,
                    }
                }
            )
        with self._lock:
            self.spapi_requests += 1
            self.spapi_log.append(
                ApiRequestRecord(
                    request.method,
                    request.path,
                    response.status,
                    account_id,
                    dict(request.headers),
                    body,
                    arrived,
                )
            )
        return response

    def _authenticate_spapi(
        self, request: web.Request
    ) -> tuple[str | None, str | None, web.Response | None]:
        """(account, grantless scope, the refusal if any) of an SP-API request."""
        token = request.headers.get(ACCESS_TOKEN_HEADER, "").strip()
        if not token:
            return None, None, spapi_error(403, MISSING, "MissingAuthenticationToken")
        now = time.monotonic()
        grantless = [p for p in GRANTLESS_PATHS if request.path.startswith(p)]
        with self._lock:
            scoped = self._grantless_tokens.get(token)
            rdt = self._rdts.get(token)
            grant = self._access_tokens.get(token)
        if scoped is not None:
            if now >= scoped.expires_at:
                return None, scoped.scope, spapi_error(403, EXPIRED)
            if not grantless or GRANTLESS_PATHS[grantless[0]] not in scoped.scope.split():
                return None, scoped.scope, spapi_error(403, "")
            return None, scoped.scope, None
        if rdt is not None:
            account_id, expires_at = rdt
            if now >= expires_at:
                return account_id, None, spapi_error(403, EXPIRED)
            return account_id, None, None
        if grant is None:
            return None, None, spapi_error(403, INVALID)
        problem = grant.problem(now)
        account_id = grant.account_id
        if problem is not None:
            details = EXPIRED if "expired" in problem else INVALID
            return account_id, None, spapi_error(403, details)
        if grantless or any(request.path.startswith(p) for p in self.spapi_missing_roles):
            return account_id, None, spapi_error(403, "")
        return account_id, None, None

    # -- the unified Ads API path ------------------------------------------------------

    async def _redirect(self, call: Any) -> web.StreamResponse:
        target = call.request.query.get("to")
        if not target:
            return _ads_error(400, "BAD_REQUEST", "the 'to' query parameter is missing")
        return web.Response(status=307, headers={hdrs.LOCATION: target})

    async def _unified_ads(self, call: Any) -> web.StreamResponse:
        problem = self._unified_ads_problem(call.request)
        return problem if problem is not None else await self._echo(call)

    def _unified_ads_problem(self, request: web.Request) -> web.Response | None:
        client_id = request.headers.get("Amazon-Ads-ClientId")
        if client_id is None:
            return _ads_error(400, "BAD_REQUEST", "Amazon-Ads-ClientId header is missing")
        if client_id != self.client_id:
            return _ads_error(401, "UNAUTHORIZED", "Amazon-Ads-ClientId does not match the token")
        if not (
            request.headers.get("Amazon-Ads-AccountId")
            or request.headers.get("Amazon-Advertising-API-Scope")
        ):
            return _ads_error(
                400,
                "BAD_REQUEST",
                "Amazon-Ads-AccountId or Amazon-Advertising-API-Scope header is required",
            )
        return None


def _oauth(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={hdrs.CACHE_CONTROL: "no-store", hdrs.PRAGMA: "no-cache"},
    )


def _ads_error(status: int, code: str, details: str) -> web.Response:
    return web.json_response({"code": code, "details": details}, status=status)
