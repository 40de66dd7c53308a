"""The signing policy without I/O: which origins, which headers, what a rejection is.

Plain data and functions, in the manner of :mod:`aioamztoken._lwa`: the aiohttp
middleware, the httpx auth and the requests auth are thin adapters that move bytes
and ask this module every question. Nothing here imports an HTTP client or asyncio.

What Amazon documents (checked against its public docs and trackers):

- **Ads API** (classic, v2/v3 paths): ``Authorization: Bearer <access token>``, the
  application's client id in ``Amazon-Advertising-API-ClientId`` and the profile id in
  ``Amazon-Advertising-API-Scope`` ("OAuth Flow in Amazon Ads API", AWS solutions docs
  for the Amazon Marketing Cloud uploader; Amazon's "retrieve profiles" guide). Newer
  APIs accept the global advertising account (``amzn1.ads-account.g.…``) in
  ``Amazon-Ads-AccountId`` instead of a profile (an Amazon Ads maintainer in
  amzn/ads-advanced-tools-docs#182); the manager account goes in
  ``Amazon-Ads-Manager-AccountId``. A rejected token is answered 401.
- **Unified Ads API** (paths under ``/adsApi/``): the same bearer, and the client id
  in ``Amazon-Ads-ClientId`` as well; we send both client-id headers there. (We found
  no public Amazon page stating the unified header names beyond this project's brief;
  sending ``Amazon-Advertising-API-ClientId`` too keeps classic gateways satisfied.)
- **Ads MCP server**: Amazon's own documents disagree on whether it takes
  ``Bearer <token>`` or the raw token, and we found no Amazon page that settles it:
  its origins are *not* among the defaults. Pass them in ``origins`` if you know.
- **Selling Partner API**: the token goes in ``x-amz-access-token``, never in
  ``Authorization``. An expired or invalid token is answered **403** with
  ``{"errors": [{"code": "Unauthorized", "message": "Access to requested resource is
  denied.", "details": "The access token you provided has expired."}]}`` (or "...is
  revoked, malformed or invalid."); a missing role gets the same message with empty
  ``details`` (amzn/selling-partner-api-models#2333, #826). Restricted operations take
  a Restricted Data Token in that same header, which is never overwritten.
- **Grantless SP-API operations** (``/notifications/v1/destinations``,
  ``/authorization/v1/authorizationCode``, ``/applications/2023-11-30/clientSecret``)
  take a token from the ``client_credentials`` grant with a ``scope`` such as
  ``sellingpartnerapi::notifications`` ("Grantless Operations", SP-API docs).
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Literal, Protocol
from urllib.parse import urlsplit

from ._models import ADS_API_ORIGINS

__all__ = [
    "API_FAMILIES",
    "REJECTION_COOLDOWN",
    "SP_API_ORIGINS",
    "AsyncTokenSource",
    "OriginSet",
    "RejectionGuard",
    "SigningPolicy",
    "SyncTokenSource",
    "Verdict",
    "body_replayable",
    "decide",
    "host_port",
    "normalize_origin",
    "sp_api_token_rejected",
]

signing_logger = logging.getLogger("aioamztoken.middleware")

Api = Literal["ads", "sp-api"]
API_FAMILIES: tuple[str, ...] = ("ads", "sp-api")

#: The Selling Partner API origins (production and sandbox, three regions).
SP_API_ORIGINS: tuple[str, ...] = (
    "https://sellingpartnerapi-na.amazon.com",
    "https://sellingpartnerapi-eu.amazon.com",
    "https://sellingpartnerapi-fe.amazon.com",
    "https://sandbox.sellingpartnerapi-na.amazon.com",
    "https://sandbox.sellingpartnerapi-eu.amazon.com",
    "https://sandbox.sellingpartnerapi-fe.amazon.com",
)

#: Seconds during which a token that was rejected right after a refresh is not
#: refreshed again for another rejection (a 401 that refreshing does not cure).
REJECTION_COOLDOWN = 60.0

AUTHORIZATION = "Authorization"
ACCESS_TOKEN_HEADER = "x-amz-access-token"
ADS_CLIENT_ID = "Amazon-Advertising-API-ClientId"
ADS_SCOPE = "Amazon-Advertising-API-Scope"
UNIFIED_CLIENT_ID = "Amazon-Ads-ClientId"
ADS_ACCOUNT_ID = "Amazon-Ads-AccountId"
ADS_MANAGER_ACCOUNT_ID = "Amazon-Ads-Manager-AccountId"
UNIFIED_PREFIX = "/adsApi/"

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: A 403 body bigger than this is not parsed: Amazon's error bodies are tiny.
MAX_REJECTION_BODY = 64 * 1024
_TOKEN_WORDS = ("expired", "revoked", "malformed", "invalid")


# ------------------------------------------------------------------ origins


def host_port(host: str, port: int | None, scheme: str) -> str:
    """The ``host[:port]`` key of a URL: host lower-cased, IPv6 bracketed, default port dropped."""
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def normalize_origin(origin: object) -> tuple[str, str]:
    """``(scheme, host[:port])`` of an origin; default ports dropped, host lower-cased.

    Raises ``ValueError`` for anything but an absolute ``http``/``https`` origin
    (``scheme://host[:port]``, an optional trailing ``/``): paths, queries, fragments
    and credentials are refused rather than silently ignored.
    """
    text = str(origin).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin (scheme://host[:port]): {text!r}") from None
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or "?" in text
        or parts.fragment
        or "#" in text
        or "@" in parts.netloc
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {text!r}")
    host = parts.hostname
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return scheme, host_port(host, port, scheme)


class OriginSet:
    """The origins a token may be sent to. Immutable; safe to share between threads."""

    __slots__ = ("_by_host",)

    def __init__(self, origins: Iterable[object]) -> None:
        if isinstance(origins, (str, bytes)) or hasattr(origins, "scheme"):
            raise TypeError("origins must be a list of origins, not a single one")
        by_host: dict[str, set[str]] = {}
        for origin in origins:
            scheme, key = normalize_origin(origin)
            by_host.setdefault(key, set()).add(scheme)
        self._by_host: dict[str | None, frozenset[str]] = {
            key: frozenset(schemes) for key, schemes in by_host.items()
        }

    @property
    def table(self) -> dict[str | None, frozenset[str]]:
        """``host[:port]`` -> schemes: what the adapters' hot paths look up (do not modify)."""
        return self._by_host

    def allows(self, scheme: str, key: str | None) -> bool:
        """True for ``scheme`` and a ``host[:port]`` key made by :func:`host_port`."""
        schemes = self._by_host.get(key)
        return schemes is not None and scheme in schemes

    def allows_url(self, url: str) -> bool:
        """True when a request to the absolute ``url`` may carry the token."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        scheme = parts.scheme.lower()
        if not parts.hostname or "@" in parts.netloc:
            return False
        return self.allows(scheme, host_port(parts.hostname, port, scheme))

    def __iter__(self) -> Iterator[str]:
        return iter(
            sorted(f"{s}://{host}" for host, schemes in self._by_host.items() for s in schemes)
        )

    def __repr__(self) -> str:
        return f"OriginSet({list(self)!r})"


# ------------------------------------------------------------------ what a rejection is


def sp_api_token_rejected(body: bytes | None) -> bool:
    """True when an SP-API 403 body says the access token expired or is revoked/invalid.

    Amazon puts that text in ``details`` (``"The access token you provided has
    expired."``) under the message ``"Access to requested resource is denied."``; it is
    accepted in ``message`` too. A 403 for a missing role carries the same message with
    empty ``details``: not a rejected token.
    """
    if not body or len(body) > MAX_REJECTION_BODY:
        return False
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return False
    for error in errors:
        if not isinstance(error, dict):
            continue
        for key in ("details", "message"):
            text = error.get(key)
            if isinstance(text, str) and _says_token_is_bad(text):
                return True
    return False


def _says_token_is_bad(text: str) -> bool:
    text = text.lower()
    return "access token" in text and any(word in text for word in _TOKEN_WORDS)


def body_replayable(body: object) -> bool:
    """Whether a request body (as an HTTP client holds it) can be sent a second time.

    Bytes, text and no body at all can; so can a seekable file (the adapter rewinds it).
    Iterators, generators, streams and unseekable files cannot.
    """
    if body is None or isinstance(body, (bytes, bytearray, memoryview, str)):
        return True
    seekable = getattr(body, "seekable", None)
    if callable(seekable) and hasattr(body, "seek") and hasattr(body, "tell"):
        try:
            return bool(seekable())
        except (OSError, ValueError):
            return False
    return False


# ------------------------------------------------------------------ the policy


class SigningPolicy:
    """Which headers an API family gets, on which origins, and what a rejection is.

    Built once per adapter; immutable afterwards; safe to share between threads. The
    configured header values (``profile_id``, ``ads_account_id``,
    ``manager_account_id``, the client id) are set only when the request does not
    already carry that header: one session can then address many profiles.
    """

    __slots__ = (
        "_classic",
        "_token_value",
        "_unified",
        "api",
        "origins",
        "token_header",
    )

    def __init__(
        self,
        api: str,
        client_id: str,
        *,
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Sequence[object] | None = None,
    ) -> None:
        if api not in API_FAMILIES:
            raise ValueError(f"api must be one of {', '.join(map(repr, API_FAMILIES))}: {api!r}")
        self.api: Api = "ads" if api == "ads" else "sp-api"
        configured = {
            ADS_SCOPE: _header_value("profile_id", profile_id),
            ADS_ACCOUNT_ID: _header_value("ads_account_id", ads_account_id),
            ADS_MANAGER_ACCOUNT_ID: _header_value("manager_account_id", manager_account_id),
        }
        if self.api == "sp-api":
            if any(value is not None for value in configured.values()):
                raise ValueError(
                    "profile_id, ads_account_id and manager_account_id are Ads API headers; "
                    "api='sp-api' takes none of them"
                )
            self.token_header = ACCESS_TOKEN_HEADER
            self._classic: tuple[tuple[str, str], ...] = ()
            self._unified: tuple[tuple[str, str], ...] = ()
            default_origins: Sequence[object] = SP_API_ORIGINS
        else:
            self.token_header = AUTHORIZATION
            extra = tuple((name, value) for name, value in configured.items() if value)
            self._classic = ((ADS_CLIENT_ID, client_id), *extra)
            self._unified = ((ADS_CLIENT_ID, client_id), (UNIFIED_CLIENT_ID, client_id), *extra)
            default_origins = ADS_API_ORIGINS
        self.origins = OriginSet(default_origins if origins is None else origins)
        # (access token, header value): rebuilt only when the token changes.
        self._token_value: tuple[str, str] = ("", "")

    def __repr__(self) -> str:
        return f"<SigningPolicy api={self.api!r} origins={list(self.origins)}>"

    def token_value(self, access_token: str) -> str:
        """The value of the token header (``token_header``) for ``access_token``."""
        cached = self._token_value
        if cached[0] is not access_token:
            value = access_token if self.api == "sp-api" else "Bearer " + access_token
            cached = self._token_value = (access_token, value)
        return cached[1]

    def headers(self, path: str) -> tuple[tuple[str, str], ...]:
        """The headers besides the token for a request to ``path``, set only if absent."""
        if self._unified and path.startswith(UNIFIED_PREFIX):
            return self._unified
        return self._classic

    def header_names(self) -> tuple[str, ...]:
        """Every header this policy may add: stripped from a redirect to another origin."""
        return (self.token_header, *(name for name, _ in self._unified))

    def leaves_alone(self, has_token_header: bool) -> bool:
        """True for an SP-API request that already carries ``x-amz-access-token`` (a
        Restricted Data Token): it is sent as it is and never refreshed-and-retried."""
        return has_token_header and self.api == "sp-api"

    def needs_body(self, status: int) -> bool:
        """Whether :meth:`is_rejection` must see the body of a ``status`` answer."""
        return status == 403 and self.api == "sp-api"

    def is_rejection(self, status: int, body: bytes | None = None) -> bool:
        """True when the answer means "this access token was rejected"."""
        if status == 401:
            return True
        return self.needs_body(status) and sp_api_token_rejected(body)


def _header_value(name: str, value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text or any(ch in text for ch in "\r\n\0"):
        raise ValueError(f"{name} must be a non-empty single-line value")
    return text


# ------------------------------------------------------------------ token sources


class AsyncTokenSource(Protocol):
    """Where an async adapter gets tokens: a cached read, a fetch, compare-and-refresh."""

    @property
    def guard(self) -> RejectionGuard: ...

    @property
    def client_id(self) -> str: ...

    def cached(self) -> str | None: ...

    def fetch(self) -> Awaitable[str]: ...

    def refresh_if_current(self, rejected: str) -> Awaitable[str]: ...


class SyncTokenSource(Protocol):
    """The blocking twin of :class:`AsyncTokenSource`, for httpx.Client and requests."""

    @property
    def guard(self) -> RejectionGuard: ...

    @property
    def client_id(self) -> str: ...

    def cached(self) -> str | None: ...

    def fetch(self) -> str: ...

    def refresh_if_current(self, rejected: str) -> str: ...


class RejectionGuard:
    """Remembers the token a refresh did not cure, so its rejections are not amplified.

    After a refresh, the retried request carries the new token. If that is rejected as
    well, refreshing again would not help (the API refuses every token: a revoked
    permission, a wrong client id): further rejections of that same token are returned
    at once, for ``cooldown`` seconds. A newer token (the background refresh when it
    falls due, or another process's) is never blocked. One per account or scope; the
    state is a single tuple, so threads may share it.
    """

    __slots__ = ("__weakref__", "_uncured", "cooldown", "on_retry")

    def __init__(
        self,
        cooldown: float = REJECTION_COOLDOWN,
        *,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.cooldown = cooldown
        self.on_retry = on_retry
        """Called with the API family each time a retry is decided (telemetry counts it)."""
        self._uncured: tuple[str, float] = ("", float("-inf"))

    def __repr__(self) -> str:
        return f"<RejectionGuard cooldown={self.cooldown}>"

    def may_refresh(self, token: str, now: float) -> bool:
        """False while ``token`` is the one a refresh did not cure, inside the cooldown."""
        uncured, until = self._uncured
        return not (token == uncured and now < until)

    def uncured(self, token: str, now: float) -> None:
        """Record that ``token``, freshly obtained by a refresh, was rejected too."""
        self._uncured = (token, now + self.cooldown)


class Verdict(enum.Enum):
    """What an adapter does with an answer (see :func:`decide`)."""

    RETURN = "return"
    """Not a rejection, or a retry's answer: give it to the caller."""
    RETRY = "retry"
    """Release it, compare-and-refresh, sign again and send once more."""
    NOT_REPLAYABLE = "not-replayable"
    """A rejection, but the body cannot be sent again: give it to the caller."""
    UNCURED = "uncured"
    """A rejection of a token a refresh already failed to cure: give it back at once."""


def decide(
    policy: SigningPolicy,
    guard: RejectionGuard,
    *,
    status: int,
    body: bytes | None,
    token: str,
    retried: bool,
    replayable: bool,
    now: float,
) -> Verdict:
    """The one decision every adapter makes after each send of a signed request.

    ``retried`` says whether this was already the second send (it never gets a third).
    A retry's rejection marks its token as uncured in ``guard``. This is also the one
    place where a retry is decided: telemetry counts :attr:`Verdict.RETRY` here.
    """
    if not policy.is_rejection(status, body):
        return Verdict.RETURN
    if retried:
        guard.uncured(token, now)
        signing_logger.debug(
            "%s rejected the refreshed token as well: its further rejections are "
            "returned without refreshing for %.0f s",
            policy.api,
            guard.cooldown,
        )
        return Verdict.RETURN
    if not replayable:
        return Verdict.NOT_REPLAYABLE
    if not guard.may_refresh(token, now):
        return Verdict.UNCURED
    note_retry(policy.api, status)
    if guard.on_retry is not None:
        guard.on_retry(policy.api)
    return Verdict.RETRY


def note_retry(api: str, status: int) -> None:
    """Called once for every request an adapter is about to refresh for and send again.

    ``api`` is ``"ads"`` or ``"sp-api"``: the hook for counting retries per API family.
    """
    signing_logger.debug("%s answered %d: refreshing if still current, retrying once", api, status)

