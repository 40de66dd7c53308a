"""AmazonEmulator and its records (see :mod:`aioamztoken.testing`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import hashlib
import json
import random
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import hdrs, web

from aioamztoken._lwa import pkce_challenge
from aioamztoken.testing import _consent
from aioamztoken.testing._client_auth import ClientAuthPolicy
from aioamztoken.testing._faults import TokenAnswerFaults
from aioamztoken.testing._spapi import SpApiEmulation

__all__ = ["AmazonEmulator", "ApiRequestRecord", "DownloadRequestRecord", "TokenRequestRecord"]

TOKEN_PATH = "/auth/o2/token"
AUTHORIZATION_PATH = "/ap/oa"
_FORM_TYPE = "application/x-www-form-urlencoded"
_CLIENT_ID_HEADER = "Amazon-Advertising-API-ClientId"
_SCOPE_HEADER = "Amazon-Advertising-API-Scope"
REPORTS_PATH = "/reporting/reports"
#: Where finished report files live on the download origin.
DOWNLOAD_PREFIX = "/offline-reports"
_S3_ONE_AUTH_MESSAGE = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
    "Signature query string parameter or the Authorization header should be specified"
)
#: How long :meth:`AmazonEmulator.close` lets in-flight requests finish before cancelling them.
_SHUTDOWN_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class TokenRequestRecord:
    """One POST to the token endpoint, as :attr:`AmazonEmulator.token_log` keeps it.

    Immutable; safe to read from any thread.
    """

    time: float
    """``time.monotonic()`` when the request arrived."""
    account_id: str | None
    """The account its refresh token or code belongs to; ``None`` when the form names none."""
    grant_type: str | None
    """The ``grant_type`` sent, ``None`` when missing."""
    status: int
    """The HTTP status of the answer."""
    headers: dict[str, str] = field(default_factory=dict)
    """A copy of the request headers as received (``Authorization`` included, if sent)."""


@dataclass(frozen=True, slots=True)
class ApiRequestRecord:
    """One request to the Ads API, as :attr:`AmazonEmulator.api_log` keeps it.

    Immutable; safe to read from any thread.
    """

    method: str
    path: str
    """The path, without the query string."""
    status: int
    account_id: str | None
    """The account of the bearer token, when it is one the emulator issued (even if expired)."""
    headers: dict[str, str]
    """A copy of the request headers as received, ``Authorization`` included."""
    body: bytes
    time: float = 0.0
    """``time.monotonic()`` when the request arrived."""


@dataclass(frozen=True, slots=True)
class DownloadRequestRecord:
    """One request to the download origin, as :attr:`AmazonEmulator.download_log` keeps it.

    Immutable; safe to read from any thread.
    """

    method: str
    path: str
    """The path, without the query string (which holds the pre-signed signature)."""
    status: int
    headers: dict[str, str]
    """A copy of the request headers as received: tests assert no ``Authorization`` here."""
    time: float = 0.0
    """``time.monotonic()`` when the request arrived."""


@dataclass(slots=True)
class _Report:
    report_id: str
    account_id: str
    profile_id: str
    request: dict[str, Any]
    created_at: float
    """``time.time()``, for the ISO timestamps of the answers."""
    polls: int = 0
    completed_at: float | None = None
    key: str = ""
    """The object key on the download origin, set once the report is completed."""
    signatures: dict[str, float] = field(default_factory=dict)
    """Each download URL handed out: its signature and the ``time.monotonic()`` it expires."""
    content: bytes = b""


@dataclass(slots=True)
class _RefreshGrant:
    account_id: str
    revoked: bool = False


@dataclass(slots=True)
class _AccessGrant:
    account_id: str
    expires_at: float
    """``time.monotonic()`` seconds."""
    revoked: bool = False

    def problem(self, now: float) -> str | None:
        if self.revoked:
            return "the access token was revoked"
        if now >= self.expires_at:
            return "the access token has expired"
        return None


@dataclass(slots=True)
class _CodeGrant:
    account_id: str
    redirect_uri: str
    code_challenge: str | None
    expires_at: float
    used: bool = False


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None

    def response(self) -> web.Response:
        headers = {hdrs.CONTENT_TYPE: self.content_type}
        if self.retry_after is not None:
            headers[hdrs.RETRY_AFTER] = self.retry_after
        return web.Response(status=self.status, body=self.body, headers=headers)


@dataclass(frozen=True, slots=True)
class _ApiCall:
    """What an Ads API endpoint gets once the caller has been authenticated."""

    request: web.Request
    account_id: str
    body: bytes


_ApiEndpoint = Callable[[_ApiCall], Awaitable[web.StreamResponse]]


class AmazonEmulator(_consent.ConsentPages, SpApiEmulation, TokenAnswerFaults):
    """Login with Amazon and the Ads API on a loopback port, with knobs for tests.

    Options (all keyword-only) and their defaults:

    - ``client_id="emu-client-id"``, ``client_secret="emu-client-secret"``: the only
      application credentials the token endpoint and the Ads API accept.
    - ``client_secrets=None``: the secrets the token endpoint accepts, when several are
      (a rotation); ``None`` means ``[client_secret]``. Others answer ``401 invalid_client``.
      (``client_secret`` may also be a list: all of them are accepted.)
    - ``client_auth_methods=("post", "basic")``: how a client may authenticate, with the
      credentials in the form and/or in an ``Authorization: Basic`` header. A request
      using both at once answers ``400 invalid_request`` (RFC 6749 section 2.3.1).
    - ``token_lifetime=3600.0``: ``expires_in`` of newly issued access tokens, in seconds;
      the tokens really stop working at the Ads API after that long.
    - ``expires_in_as_string=False``: send ``"expires_in": "3600"`` as Amazon sometimes does.
    - ``rotate_refresh_tokens=False``: every refresh returns a new refresh token and the
      old one answers ``invalid_grant`` from then on.
    - ``host="127.0.0.1"``: the interface to listen on; ``port=0``: the port of
      :attr:`base_url` (0, the default, picks a free one; the download origin always does).
    - ``seed=0``: seeds :attr:`rng`, so ``failure_rate`` and latency ranges are reproducible.

    All these, and the attributes below, may be changed while the emulator runs.

    The URLs (:attr:`base_url`, :attr:`token_url`, :attr:`authorization_url`,
    :attr:`api_url`, :attr:`download_url`) are known once :meth:`start` has run;
    reading them earlier raises ``RuntimeError``. Use it as ``async with AmazonEmulator()
    as amazon:``, or from synchronous code with :meth:`running_in_thread`.

    Concurrency: serves on the event loop that called :meth:`start`; close it from that
    loop. State-changing methods are safe to call from any thread.
    """

    code_lifetime: float = 300.0
    """Seconds an authorization code stays valid after it is issued."""
    consent_account: str = "emu-account"
    """The account that "logs in" on the consent page."""
    failure_status: int = 503
    """The HTTP status of the failures :attr:`failure_rate` injects."""
    report_polls: int = 3
    """The status poll (``GET /reporting/reports/{id}``) on which a report turns
    ``COMPLETED``: 1 means the first poll already finds it done. Earlier polls answer
    ``PENDING`` (the first) and then ``PROCESSING``."""
    report_rows: int = 5
    """Rows in each report file."""
    report_url_lifetime: float = 3600.0
    """Seconds a report's download URL works (then the download origin answers 403)."""
    download_redirect_status: int = 307
    """The status of ``GET /v2/reports/{reportId}/download``, which redirects to the
    download origin as Amazon's v2 reports did (301, 302, 303, 307 or 308)."""

    def __init__(
        self,
        *,
        client_id: str = "emu-client-id",
        client_secret: str | Collection[str] = "emu-client-secret",  # noqa: S107 (a fake)
        token_lifetime: float = 3600.0,
        expires_in_as_string: bool = False,
        rotate_refresh_tokens: bool = False,
        host: str = "127.0.0.1",
        seed: int = 0,
        client_secrets: Collection[str] | None = None,
        client_auth_methods: Collection[str] = ("post", "basic"),
        port: int = 0,
    ) -> None:
        if not isinstance(client_secret, str):  # several: all accepted, the first is "the" one
            client_secrets = [*client_secret, *(client_secrets or ())]
            client_secret = client_secrets[0]
        self.client_id = client_id
        self.client_secret = client_secret
        self.client_secrets: list[str] | None = (
            None if client_secrets is None else list(client_secrets)
        )
        self.client_auth_methods = ClientAuthPolicy(client_auth_methods).methods
        self.token_lifetime = token_lifetime
        self.expires_in_as_string = expires_in_as_string
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.host = host
        self.port = port  # of base_url; 0 picks a free one (the download origin always does)

        self.rng = random.Random(seed)
        """Decides which requests :attr:`failure_rate` fails. Replace it to reseed."""
        self.failure_rate = 0.0
        """Probability (0..1) that a token request fails with :attr:`failure_status`."""
        self.latency: float | tuple[float, float] = 0.0
        """Delay added to every token request: seconds, or a ``(low, high)`` uniform range."""
        # Latency draws come from their own generator so that changing the latency
        # does not change which requests failure_rate picks.
        self._latency_rng = random.Random(seed)

        self.last_consent: dict[str, str] | None = None
        """The query string of the last visit to the consent page."""

        self.token_requests = 0
        """POSTs to the token endpoint, whatever their outcome."""
        self.refresh_grants = 0
        """Successful ``refresh_token`` grants."""
        self.code_grants = 0
        """Successful ``authorization_code`` grants."""
        self.in_flight = 0
        """Token requests being handled right now (from arrival to answer)."""
        self.max_in_flight = 0
        """The peak of :attr:`in_flight` since start or :meth:`reset_counters`."""
        self.token_log: list[TokenRequestRecord] = []
        """Every token request, in the order they were answered."""
        self.api_requests = 0
        """Requests to the Ads API, whatever their outcome."""
        self.api_log: list[ApiRequestRecord] = []
        """Every Ads API request (401s included), in the order they were answered."""
        self.reports_created = 0
        """Reports created with ``POST /reporting/reports``."""
        self.download_requests = 0
        """Requests to the download origin, whatever their outcome."""
        self.download_log: list[DownloadRequestRecord] = []
        """Every request to the download origin, in the order they were answered."""

        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, _RefreshGrant] = {}
        self._access_tokens: dict[str, _AccessGrant] = {}
        self._codes: dict[str, _CodeGrant] = {}
        self._token_faults: collections.deque[_Fault] = collections.deque()
        self._api_faults: collections.deque[_Fault] = collections.deque()
        self._token_requests_by_account: collections.Counter[str] = collections.Counter()
        self._api_requests_by_account: collections.Counter[str] = collections.Counter()
        self._reports: dict[str, _Report] = {}
        self._reports_by_key: dict[str, _Report] = {}
        self._runners: list[web.AppRunner] = []
        self._base_url: str | None = None
        self._download_url: str | None = None
        self._closing = asyncio.Event()
        self._init_spapi()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening. Raises ``RuntimeError`` if already started."""
        if self._runners:
            raise RuntimeError("the emulator is already running")
        self._closing = asyncio.Event()
        try:
            self._base_url = await self._serve(self._build_app(), self.port)
            # Report files live on an origin of their own, like S3: it must never see
            # a bearer token.
            self._download_url = await self._serve(self._build_download_app())
            await self._start_spapi()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and close every connection. Safe to call more than once.

        Token requests held by :attr:`latency` are answered 503 at once; other requests
        still being handled get up to a second to finish.
        """
        self._closing.set()
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()

    async def __aenter__(self) -> AmazonEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @classmethod
    @contextlib.contextmanager
    def running_in_thread(cls, **kwargs: Any) -> Iterator[AmazonEmulator]:
        """Run an emulator on its own event loop in a daemon thread, for synchronous tests.

        ``kwargs`` are those of the constructor. The emulator has started when the
        ``with`` block is entered; on exit it is closed, and its loop and thread are
        finished, before the block's exception (if any) propagates. An error raised
        while starting or closing it is re-raised in the calling thread.
        """
        emulator = cls(**kwargs)
        thread = _EmulatorThread(emulator)
        thread.start()
        try:
            yield emulator
        finally:
            thread.stop()

    async def _serve(self, app: web.Application, port: int = 0) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self.host, port).start()
        host, port = runner.addresses[0][:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", TOKEN_PATH, self._handle_token_request)
        app.router.add_route("*", AUTHORIZATION_PATH, self._handle_consent)
        _consent.add_consent_routes(self, app)
        # Ads API endpoints with behaviour of their own, registered through
        # _add_api_route so that each is authenticated, fault-injected and logged alike.
        # Add new ones here, before the catch-all.
        self._add_api_route(app, "GET", "/v2/profiles", self._list_profiles)
        self._add_api_route(app, "POST", REPORTS_PATH, self._create_report)
        self._add_api_route(app, "GET", REPORTS_PATH + "/{reportId}", self._report_status)
        self._add_api_route(app, "GET", "/v2/reports/{reportId}/download", self._redirect_download)
        self._add_api_route(app, "*", "/echo", self._echo)
        self._add_api_route(app, "*", "/adsApi/{path:.*}", self._unified_ads)
        self._add_api_route(app, "GET", "/emulator/redirect", self._redirect)
        self._add_api_route(app, "*", "/{path:.*}", self._any_api_path)
        return app

    def _build_download_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle_download)
        return app

    def _add_api_route(
        self, app: web.Application, method: str, path: str, endpoint: _ApiEndpoint
    ) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle_api_request(request, endpoint)

        app.router.add_route(method, path, handler)

    # -- URLs --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, the origin of everything the emulator serves."""
        if self._base_url is None:
            raise RuntimeError("the emulator has not been started")
        return self._base_url

    @property
    def token_url(self) -> str:
        """The LwA token endpoint (``base_url + "/auth/o2/token"``)."""
        return self.base_url + TOKEN_PATH

    @property
    def authorization_url(self) -> str:
        """The consent page (``base_url + "/ap/oa"``)."""
        return self.base_url + AUTHORIZATION_PATH

    @property
    def seller_central_url(self) -> str:
        """Seller Central's SP-API consent page (``base_url + "/apps/authorize/consent"``)."""
        return self.base_url + _consent.SELLER_CENTRAL_PATH

    @property
    def api_url(self) -> str:
        """The Ads API origin: the same server, equal to :attr:`base_url`."""
        return self.base_url

    @property
    def download_url(self) -> str:
        """``http://127.0.0.1:OTHER_PORT``: the origin report files are served from (S3)."""
        if self._download_url is None:
            raise RuntimeError("the emulator has not been started")
        return self._download_url

    # -- issuing credentials -----------------------------------------------------------

    def issue_refresh_token(self, account_id: str) -> str:
        """A new ``Atzr|...`` refresh token for ``account_id``, as if it had given consent."""
        with self._lock:
            return self._new_refresh_token(account_id)

    def issue_code(
        self, account_id: str, *, redirect_uri: str, code_challenge: str | None = None
    ) -> str:
        """A new ``ANcode...`` authorization code for ``account_id``.

        It works once, within :attr:`code_lifetime` seconds, with this exact
        ``redirect_uri``; given a ``code_challenge`` (S256), the exchange must send the
        matching ``code_verifier``.
        """
        code = "ANcode" + secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _CodeGrant(
                account_id, redirect_uri, code_challenge, time.monotonic() + self.code_lifetime
            )
        return code

    def issue_access_token(self, account_id: str, *, lifetime: float | None = None) -> str:
        """A valid ``Atza|...`` bearer for ``account_id``, valid ``lifetime`` seconds.

        ``lifetime`` defaults to ``token_lifetime``. No token request is made or counted.
        """
        with self._lock:
            return self._new_access_token(
                account_id, self.token_lifetime if lifetime is None else lifetime
            )

    def _new_refresh_token(self, account_id: str) -> str:
        token = "Atzr|" + secrets.token_urlsafe(48)
        self._refresh_tokens[token] = _RefreshGrant(account_id)
        return token

    def _new_access_token(self, account_id: str, lifetime: float) -> str:
        token = "Atza|" + secrets.token_urlsafe(48)
        self._access_tokens[token] = _AccessGrant(account_id, time.monotonic() + lifetime)
        return token

    # -- state changes -----------------------------------------------------------------

    def revoke(self, account_id: str) -> None:
        """Revoke every refresh token and access token of ``account_id``.

        Its refresh tokens then answer ``invalid_grant`` and its access tokens 401.
        """
        with self._lock:
            for refresh in self._refresh_tokens.values():
                if refresh.account_id == account_id:
                    refresh.revoked = True
            for access in self._access_tokens.values():
                if access.account_id == account_id:
                    access.revoked = True

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """Revoke one refresh token; access tokens issued with it keep working until expiry."""
        with self._lock:
            grant = self._refresh_tokens.get(refresh_token)
            if grant is not None:
                grant.revoked = True

    def expire_access_tokens(self, account_id: str | None = None) -> None:
        """Make the access tokens of ``account_id`` (of everyone if ``None``) expire now.

        The Ads API answers 401 to them from then on; refresh tokens are untouched.
        """
        now = time.monotonic()
        with self._lock:
            for access in self._access_tokens.values():
                if account_id is None or access.account_id == account_id:
                    access.expires_at = min(access.expires_at, now)

    # -- fault injection ---------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        body: str | bytes | None = None,
        content_type: str = "application/json",
        retry_after: str | float | None = None,
    ) -> None:
        """Make the next ``count`` token requests fail with ``status``.

        ``body`` defaults to an RFC 6749 error object: ``server_error`` for 5xx,
        ``temporarily_unavailable`` for 429, ``invalid_client`` for 401 and
        ``invalid_request`` otherwise. Pass ``body="<html>502 Bad Gateway</html>"`` with
        ``content_type="text/html"`` to imitate a proxy. ``retry_after``, if given, is sent
        as the ``Retry-After`` header (whatever the status). Queued failures take effect
        before anything else is checked; the requests are still counted and attributed.
        """
        fault = _make_fault(status, body, content_type, retry_after, _token_error_body)
        with self._lock:
            self._token_faults.extend([fault] * count)

    def api_fail_next(
        self,
        count: int = 1,
        *,
        status: int = 401,
        body: str | bytes | None = None,
        content_type: str = "application/json",
        retry_after: str | float | None = None,
    ) -> None:
        """Make the next ``count`` Ads API requests fail with ``status``, whatever their token.

        ``body`` defaults to Amazon's ``{"code": ..., "details": ...}`` shape (``UNAUTHORIZED``
        for 401, ``THROTTLED`` for 429, ``INTERNAL_ERROR`` for 5xx). A 401 here imitates
        Amazon rejecting a token that looks valid locally. ``retry_after`` is sent as the
        ``Retry-After`` header when given. The requests are logged like any other.
        """
        fault = _make_fault(status, body, content_type, retry_after, _api_error_body)
        with self._lock:
            self._api_faults.extend([fault] * count)

    def reset_counters(self) -> None:
        """Zero every counter and clear every log (tokens, reports and queued faults are kept)."""
        with self._lock:
            self.token_requests = 0
            self.refresh_grants = 0
            self.code_grants = 0
            self.max_in_flight = self.in_flight
            self.token_log.clear()
            self.api_requests = 0
            self.api_log.clear()
            self.reports_created = 0
            self.download_requests = 0
            self.download_log.clear()
            self._token_requests_by_account.clear()
            self._api_requests_by_account.clear()
            self._reset_spapi_counters()

    # -- observation -------------------------------------------------------------------

    def token_requests_for(self, account_id: str) -> int:
        """POSTs to the token endpoint whose refresh token or code belongs to ``account_id``.

        Every outcome counts: failures injected, revoked tokens, used codes.
        """
        with self._lock:
            return self._token_requests_by_account[account_id]

    def profile_ids(self, account_id: str) -> list[str]:
        """The ids of the two profiles ``GET /v2/profiles`` lists for ``account_id``.

        Stable for an account; the reporting endpoints accept only these as its
        ``Amazon-Advertising-API-Scope``.
        """
        return [str(profile["profileId"]) for profile in _profiles_of(account_id)]

    def report_status(self, report_id: str) -> str | None:
        """``PENDING``, ``PROCESSING`` or ``COMPLETED``; ``None`` for an unknown report."""
        with self._lock:
            report = self._reports.get(report_id)
            return None if report is None else self._status_of(report)

    def api_requests_for(self, account_id: str) -> int:
        """Ads API requests that carried a bearer token of ``account_id`` (401s included)."""
        with self._lock:
            return self._api_requests_by_account[account_id]

    def current_access_token(self, account_id: str) -> str | None:
        """The most recently issued access token of ``account_id`` that still works, if any."""
        now = time.monotonic()
        with self._lock:
            for token, grant in reversed(self._access_tokens.items()):
                if grant.account_id == account_id and grant.problem(now) is None:
                    return token
        return None

    # -- token endpoint ----------------------------------------------------------------

    async def _handle_token_request(self, request: web.Request) -> web.StreamResponse:
        if request.method != hdrs.METH_POST:
            return web.Response(status=405, headers={hdrs.ALLOW: hdrs.METH_POST})
        arrived = time.monotonic()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.read()
            form, form_problem = _parse_form(request.content_type, body)
            account_id = self._account_named_by(form)
            with self._lock:
                self.token_requests += 1
                if account_id is not None:
                    self._token_requests_by_account[account_id] += 1
                fault = self._next_token_fault()
                delay = self._next_latency()
            if delay > 0:
                await self._sleep_unless_closing(delay)
            if self._closing.is_set():
                response = _oauth_error(503, "temporarily_unavailable", "Shutting down")
            elif fault is not None:
                response = fault.response()
            elif form_problem is not None:
                response = _oauth_error(400, "invalid_request", form_problem)
            else:
                response = self._grant(request, form)
            with self._lock:
                self.token_log.append(
                    TokenRequestRecord(
                        arrived,
                        account_id,
                        form.get("grant_type") or None,
                        response.status,
                        dict(request.headers),
                    )
                )
            return response
        finally:
            with self._lock:
                self.in_flight -= 1

    def _account_named_by(self, form: dict[str, str]) -> str | None:
        with self._lock:
            refresh = self._refresh_tokens.get(form.get("refresh_token", ""))
            if refresh is not None:
                return refresh.account_id
            code = self._codes.get(form.get("code", ""))
            return None if code is None else code.account_id

    def _next_token_fault(self) -> _Fault | None:
        if self._token_faults:
            return self._token_faults.popleft()
        # No draw when failures are off, so that turning them on later stays reproducible.
        if self.failure_rate > 0 and self.rng.random() < self.failure_rate:
            status = self.failure_status
            return _make_fault(status, None, "application/json", None, _token_error_body)
        return None

    async def _sleep_unless_closing(self, delay: float) -> None:
        # Waking up on close lets aiohttp's graceful shutdown finish at once instead of
        # waiting out its timeout for handlers it cannot cancel.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    def _next_latency(self) -> float:
        latency = self.latency
        if isinstance(latency, tuple):
            low, high = latency
            return self._latency_rng.uniform(low, high)
        return latency

    def _grant(self, request: web.Request, form: dict[str, str]) -> web.Response:
        secrets = [self.client_secret] if self.client_secrets is None else self.client_secrets
        refusal = ClientAuthPolicy(self.client_auth_methods).check(
            self.client_id, secrets, request.headers.get(hdrs.AUTHORIZATION), form
        )
        if refusal is not None:
            return _oauth_error(*refusal)
        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "The grant_type parameter is missing")
        if grant_type == "refresh_token":
            return self._refresh_grant(form)
        if grant_type == "authorization_code":
            return self._code_grant(form)
        if grant_type == "client_credentials":
            return self._client_credentials_grant(form)
        return _oauth_error(
            400, "unsupported_grant_type", f"The grant type {grant_type!r} is not supported"
        )

    def _refresh_grant(self, form: dict[str, str]) -> web.Response:
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            return _oauth_error(400, "invalid_request", "The refresh_token parameter is missing")
        with self._lock:
            grant = self._refresh_tokens.get(refresh_token)
            if grant is None or grant.revoked:
                return _oauth_error(
                    400, "invalid_grant", "The refresh token is invalid, revoked or unknown"
                )
            if self.rotate_refresh_tokens:
                grant.revoked = True
                refresh_token = self._new_refresh_token(grant.account_id)
            access_token = self._new_access_token(grant.account_id, self.token_lifetime)
            self.refresh_grants += 1
        return self._token_response(access_token, refresh_token)

    def _code_grant(self, form: dict[str, str]) -> web.Response:
        code = form.get("code")
        redirect_uri = form.get("redirect_uri")
        if not code:
            return _oauth_error(400, "invalid_request", "The code parameter is missing")
        if not redirect_uri:
            return _oauth_error(400, "invalid_request", "The redirect_uri parameter is missing")
        with self._lock:
            grant = self._codes.get(code)
            problem = _code_problem(grant, redirect_uri, form.get("code_verifier"))
            if grant is None or problem is not None:
                return _oauth_error(400, "invalid_grant", problem or "unknown code")
            grant.used = True
            refresh_token = self._new_refresh_token(grant.account_id)
            access_token = self._new_access_token(grant.account_id, self.token_lifetime)
            self.code_grants += 1
        return self._token_response(access_token, refresh_token)

    def _token_response(self, access_token: str, refresh_token: str) -> web.Response:
        lifetime = self.token_lifetime
        expires_in: int | float | str = int(lifetime) if lifetime == int(lifetime) else lifetime
        if self.expires_in_as_string:
            expires_in = str(expires_in)
        payload = {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": expires_in,
        }
        spoiled = self._spoiled_answer(payload)  # spoil_next_answers(), in _faults
        if spoiled is not None:
            return spoiled
        return web.json_response(
            payload, headers={hdrs.CACHE_CONTROL: "no-store", hdrs.PRAGMA: "no-cache"}
        )

    # -- consent page ------------------------------------------------------------------

    async def _handle_consent(self, request: web.Request) -> web.StreamResponse:
        page = await _consent.ads_consent(self, request)
        if page is not None:  # the HTML page, or the decision posted from it
            return page
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return web.Response(status=405, headers={hdrs.ALLOW: hdrs.METH_GET})
        query = dict(request.query)
        with self._lock:
            self.last_consent = query
        problem = self._consent_problem(query)
        if problem is not None:
            return web.Response(status=400, text=f"Bad consent request: {problem}")
        redirect_uri = query["redirect_uri"]
        code = self.issue_code(
            self.consent_account,
            redirect_uri=redirect_uri,
            code_challenge=query.get("code_challenge"),
        )
        params = {"code": code}
        params.update({k: query[k] for k in ("scope", "state") if k in query})
        separator = "&" if "?" in redirect_uri else "?"
        return web.Response(
            status=302, headers={hdrs.LOCATION: redirect_uri + separator + urlencode(params)}
        )

    def _consent_problem(self, query: dict[str, str]) -> str | None:
        if query.get("client_id") != self.client_id:
            return "unknown client_id"
        if query.get("response_type") != "code":
            return "response_type must be 'code'"
        if not query.get("redirect_uri"):
            return "redirect_uri is missing"
        if "code_challenge" in query and query.get("code_challenge_method") != "S256":
            return "code_challenge_method must be 'S256'"
        return None

    # -- Ads API -----------------------------------------------------------------------

    async def _handle_api_request(
        self, request: web.Request, endpoint: _ApiEndpoint
    ) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        account_id, problem = self._authenticate_api_call(request)
        with self._lock:
            fault = self._api_faults.popleft() if self._api_faults else None
        if fault is not None:
            response: web.StreamResponse = fault.response()
        elif problem is not None:
            response = problem
        else:
            assert account_id is not None
            response = await endpoint(_ApiCall(request, account_id, body))
        with self._lock:
            self.api_requests += 1
            if account_id is not None:
                self._api_requests_by_account[account_id] += 1
            self.api_log.append(
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

    def _authenticate_api_call(
        self, request: web.Request
    ) -> tuple[str | None, web.Response | None]:
        """The account of the bearer (if known) and the error answer, if the call is refused.

        A bad, unknown, expired or revoked bearer and a wrong client id answer 401; a
        missing ``Amazon-Advertising-API-ClientId`` header answers 400.
        """
        scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, _api_error(401, "UNAUTHORIZED", "Missing or malformed bearer token")
        with self._lock:
            grant = self._access_tokens.get(token)
            problem = "unknown access token" if grant is None else grant.problem(time.monotonic())
        account_id = None if grant is None else grant.account_id
        if problem is not None:
            return account_id, _api_error(401, "UNAUTHORIZED", f"Not authorized: {problem}")
        client_id = request.headers.get(_CLIENT_ID_HEADER)
        if client_id is None:
            return account_id, _api_error(400, "400", f"{_CLIENT_ID_HEADER} header is missing")
        if client_id != self.client_id:
            return account_id, _api_error(
                401, "UNAUTHORIZED", f"{_CLIENT_ID_HEADER} does not match the token's client"
            )
        return account_id, None

    async def _list_profiles(self, call: _ApiCall) -> web.StreamResponse:
        return web.json_response(_profiles_of(call.account_id))

    async def _echo(self, call: _ApiCall) -> web.StreamResponse:
        return web.json_response(
            {
                "method": call.request.method,
                "path": call.request.path,
                "headers": dict(call.request.headers),
                "body": call.body.decode("utf-8", "replace"),
                "account_id": call.account_id,
            }
        )

    async def _any_api_path(self, call: _ApiCall) -> web.StreamResponse:
        return web.json_response({"ok": True, "path": call.request.path})

    # -- reports -----------------------------------------------------------------------

    def _profile_problem(self, call: _ApiCall) -> web.Response | None:
        """400 without a scope header; 403 when it names no profile of the caller's account."""
        scope = call.request.headers.get(_SCOPE_HEADER)
        if not scope:
            return _api_error(400, "400", f"{_SCOPE_HEADER} header is missing")
        if scope not in {str(p["profileId"]) for p in _profiles_of(call.account_id)}:
            return _api_error(403, "FORBIDDEN", "The profile is not accessible with this token")
        return None

    def _owned_report(self, call: _ApiCall) -> _Report | web.Response:
        problem = self._profile_problem(call)
        if problem is not None:
            return problem
        with self._lock:
            report = self._reports.get(call.request.match_info["reportId"])
        scope = call.request.headers[_SCOPE_HEADER]
        if report is None or report.account_id != call.account_id or report.profile_id != scope:
            return _api_error(404, "NOT_FOUND", "Report not found")
        return report

    async def _create_report(self, call: _ApiCall) -> web.StreamResponse:
        problem = self._profile_problem(call)
        if problem is not None:
            return problem
        try:
            body = json.loads(call.body)
        except (UnicodeDecodeError, ValueError):
            return _api_error(400, "400", "The request body is not JSON")
        configuration = body.get("configuration") if isinstance(body, dict) else None
        if not isinstance(configuration, dict) or not configuration.get("reportTypeId"):
            return _api_error(400, "400", "configuration.reportTypeId is required")
        if configuration.get("format", "GZIP_JSON") != "GZIP_JSON":
            return _api_error(400, "400", "Only GZIP_JSON is supported")
        report = _Report(
            str(uuid.uuid4()),
            call.account_id,
            call.request.headers[_SCOPE_HEADER],
            body,
            time.time(),
        )
        with self._lock:
            self._reports[report.report_id] = report
            self.reports_created += 1
            answer = self._report_json(report)
        return web.json_response(answer)

    async def _report_status(self, call: _ApiCall) -> web.StreamResponse:
        report = self._owned_report(call)
        if isinstance(report, web.Response):
            return report
        with self._lock:
            report.polls += 1
            if report.completed_at is None and report.polls >= self.report_polls:
                self._complete(report)
            answer = self._report_json(report)
        return web.json_response(answer)

    async def _redirect_download(self, call: _ApiCall) -> web.StreamResponse:
        report = self._owned_report(call)
        if isinstance(report, web.Response):
            return report
        with self._lock:
            url = self._signed_url(report) if report.completed_at is not None else None
        if url is None:
            return _api_error(400, "400", "The report is not completed yet")
        status = self.download_redirect_status
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"download_redirect_status must be a redirect, not {status}")
        return web.Response(status=status, headers={hdrs.LOCATION: url})

    def _complete(self, report: _Report) -> None:
        report.completed_at = time.time()
        report.key = f"{DOWNLOAD_PREFIX}/{report.profile_id}/{report.report_id}.json.gz"
        report.content = gzip.compress(
            json.dumps(_report_rows(report, self.report_rows)).encode("utf-8"), mtime=0
        )
        self._reports_by_key[report.key] = report

    def _status_of(self, report: _Report) -> str:
        if report.completed_at is not None:
            return "COMPLETED"
        return "PENDING" if report.polls <= 1 else "PROCESSING"

    def _signed_url(self, report: _Report) -> str:
        """A new pre-signed URL, valid :attr:`report_url_lifetime` seconds from now."""
        signature = secrets.token_hex(32)
        report.signatures[signature] = time.monotonic() + self.report_url_lifetime
        query = urlencode(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Credential": "EMULATOR/us-east-1/s3/aws4_request",
                "X-Amz-Expires": str(int(self.report_url_lifetime)),
                "X-Amz-SignedHeaders": "host",
                "X-Amz-Signature": signature,
            }
        )
        return f"{self.download_url}{report.key}?{query}"

    def _report_json(self, report: _Report) -> dict[str, Any]:
        """The report as ``GET /reporting/reports/{reportId}`` describes it (v3 shape)."""
        request = report.request
        answer: dict[str, Any] = {
            "reportId": report.report_id,
            "name": request.get("name"),
            "status": self._status_of(report),
            "configuration": request.get("configuration"),
            "startDate": request.get("startDate"),
            "endDate": request.get("endDate"),
            "createdAt": _iso(report.created_at),
            "updatedAt": _iso(report.created_at),
            "generatedAt": None,
            "fileSize": None,
            "url": None,
            "urlExpiresAt": None,
            "failureReason": None,
        }
        completed_at = report.completed_at
        if completed_at is not None:
            answer.update(
                updatedAt=_iso(completed_at),
                generatedAt=_iso(completed_at),
                fileSize=len(report.content),
                url=self._signed_url(report),
                urlExpiresAt=_iso(time.time() + self.report_url_lifetime),
            )
        return answer

    # -- download origin (S3) ----------------------------------------------------------

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        response = self._download(request)
        with self._lock:
            self.download_requests += 1
            self.download_log.append(
                DownloadRequestRecord(
                    request.method, request.path, response.status, dict(request.headers), arrived
                )
            )
        return response

    def _download(self, request: web.Request) -> web.Response:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return _s3_error(405, "MethodNotAllowed", "The method is not allowed")
        if hdrs.AUTHORIZATION in request.headers:
            # What S3 answers to a pre-signed URL that also carries a bearer token.
            return _s3_error(400, "InvalidArgument", _S3_ONE_AUTH_MESSAGE)
        with self._lock:
            report = self._reports_by_key.get(request.path)
            signature = request.query.get("X-Amz-Signature", "")
            expires_at = None if report is None else report.signatures.get(signature)
        if report is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if expires_at is None:
            return _s3_error(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match"
            )
        if time.monotonic() >= expires_at:
            return _s3_error(403, "AccessDenied", "Request has expired")
        return web.Response(
            body=report.content,
            headers={
                hdrs.CONTENT_TYPE: "application/octet-stream",
                hdrs.ETAG: '"'
                + hashlib.md5(report.content, usedforsecurity=False).hexdigest()
                + '"',
            },
        )


class _EmulatorThread:
    """Runs an emulator's whole life (start, serve, close) on a private loop and thread."""

    def __init__(self, emulator: AmazonEmulator) -> None:
        self._emulator = emulator
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="AmazonEmulator", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed over to the thread that waits on us
            self._error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await self._emulator.start()
        try:
            self._started.set()
            await self._stopping.wait()
        finally:
            await self._emulator.close()


def _parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], str | None]:
    """The form fields, and what is wrong with the request (``None`` if nothing)."""
    if content_type != _FORM_TYPE:
        return {}, f"Content-Type must be {_FORM_TYPE}"
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}, "The request body is not UTF-8"
    form = dict(pairs)
    if len(form) != len(pairs):
        return form, "A parameter was sent more than once"
    return form, None


def _code_problem(grant: _CodeGrant | None, redirect_uri: str, verifier: str | None) -> str | None:
    if grant is None:
        return "The authorization code is unknown"
    if grant.used:
        return "The authorization code has already been used"
    if time.monotonic() >= grant.expires_at:
        return "The authorization code has expired"
    if grant.redirect_uri != redirect_uri:
        return "redirect_uri does not match the one the code was issued for"
    if grant.code_challenge is not None:
        if not verifier:
            return "code_verifier is missing"
        try:
            matches = pkce_challenge(verifier) == grant.code_challenge
        except UnicodeEncodeError:
            matches = False
        if not matches:
            return "code_verifier does not match the code_challenge"
    return None


def _make_fault(
    status: int,
    body: str | bytes | None,
    content_type: str,
    retry_after: str | float | None,
    default_body: Callable[[int], bytes],
) -> _Fault:
    if not 100 <= status <= 599:
        raise ValueError(f"not an HTTP status: {status}")
    if body is None:
        payload = default_body(status)
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    else:
        payload = body
    if retry_after is None or isinstance(retry_after, str):
        header = retry_after
    else:
        header = str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
    return _Fault(status, payload, content_type, header)


def _token_error_body(status: int) -> bytes:
    if status >= 500:
        error = "server_error"
    elif status == 429:
        error = "temporarily_unavailable"
    elif status == 401:
        error = "invalid_client"
    else:
        error = "invalid_request"
    text = f"Emulated failure ({status})"
    return json.dumps({"error": error, "error_description": text}).encode("utf-8")


def _api_error_body(status: int) -> bytes:
    codes = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 429: "THROTTLED"}
    code = "INTERNAL_ERROR" if status >= 500 else codes.get(status, str(status))
    return json.dumps({"code": code, "details": f"Emulated failure ({status})"}).encode("utf-8")


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={hdrs.CACHE_CONTROL: "no-store", hdrs.PRAGMA: "no-cache"},
    )


def _api_error(status: int, code: str, details: str) -> web.Response:
    return web.json_response({"code": code, "details": details}, status=status)


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + "Z"


#: Every column the emulated reports know; a report keeps those its configuration asks for.
REPORT_COLUMNS = (
    "campaignId",
    "campaignName",
    "campaignStatus",
    "impressions",
    "clicks",
    "cost",
    "purchases7d",
    "sales7d",
)


def _report_rows(report: _Report, count: int) -> list[dict[str, Any]]:
    """``count`` stable rows for a report, with the columns its configuration names."""
    configuration = report.request.get("configuration") or {}
    columns = configuration.get("columns") or list(REPORT_COLUMNS)
    seed = int.from_bytes(hashlib.sha256(report.profile_id.encode("utf-8")).digest()[:6], "big")
    rows = []
    for n in range(count):
        draw = random.Random(seed * 1000 + n)
        impressions = draw.randint(100, 50_000)
        clicks = draw.randint(0, impressions // 20)
        purchases = draw.randint(0, clicks // 5 + 1)
        full: dict[str, Any] = {
            "campaignId": str(seed * 100 + n),
            "campaignName": f"Campaign {n + 1}",
            "campaignStatus": "ENABLED",
            "impressions": impressions,
            "clicks": clicks,
            "cost": round(clicks * draw.uniform(0.2, 2.5), 2),
            "purchases7d": purchases,
            "sales7d": round(purchases * draw.uniform(5, 80), 2),
        }
        rows.append({column: full.get(column) for column in columns})
    return rows


def _profiles_of(account_id: str) -> list[dict[str, Any]]:
    """Two stable fake profiles (US and CA marketplaces) for an account."""
    digest = int.from_bytes(hashlib.sha256(account_id.encode("utf-8")).digest()[:6], "big")
    profile_id = 1_000_000_000_000 + digest % 9_000_000_000_000
    account_info = {"id": f"A{digest:012X}", "type": "seller", "name": account_id}
    markets = [
        ("US", "USD", "America/Los_Angeles", "ATVPDKIKX0DER"),
        ("CA", "CAD", "America/Los_Angeles", "A2EUQ1WTGCTBG2"),
    ]
    return [
        {
            "profileId": profile_id + offset,
            "countryCode": country,
            "currencyCode": currency,
            "timezone": timezone,
            "accountInfo": {**account_info, "marketplaceStringId": marketplace},
        }
        for offset, (country, currency, timezone, marketplace) in enumerate(markets)
    ]
